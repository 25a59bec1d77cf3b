// mailgate console: the dashboard refreshes itself by fetching its live part from the server.
// No other script runs; every page works without it.
(function () {
  "use strict";
  function refresh(live) {
    fetch(live.dataset.source, {credentials: "same-origin", cache: "no-store"})
      .then(function (response) {
        if (response.redirected || !response.ok) { return null; }
        return response.text();
      })
      .then(function (html) { if (html !== null) { live.innerHTML = html; } })
      .catch(function () { /* the server is restarting: try again at the next tick */ });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (!live) { return; }
    var seconds = parseInt(live.dataset.refresh, 10) || 5;
    window.setInterval(function () { refresh(live); }, seconds * 1000);
  });
})();
