"""The dashboard: traffic charts, queue depth, disk and back-pressure, TLS share and top lists.

Owns: the `/` page and its `/dashboard/live` fragment (the page's script fetches it every few
seconds and swaps it in, so the dashboard refreshes by itself), polling the log follower at most
once per POLL_INTERVAL (in a thread: it reads files), and the figures shown.
Must not: count log records (traffic.py) or draw (charts.py).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

from aiohttp import web

from mailgate.console.charts import line_chart
from mailgate.console.context import Console
from mailgate.console.traffic import SERIES, LogFollower, Traffic
from mailgate.queue.store import MessageState

POLL_INTERVAL = 2.0  # seconds: many browsers refreshing read the log once
REFRESH_SECONDS = 5  # the page's own refresh (static/console.js reads it from the page)
DAYS = 7


class Dashboard:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.traffic = Traffic(days=DAYS)
        self._follower: LogFollower | None = None
        self._polled = 0.0
        self._lock = asyncio.Lock()

    async def _fresh_traffic(self) -> Traffic:
        json_file = self.console.services.config().log.json_file
        if self._follower is None or self._follower.json_file != json_file:
            self.traffic = Traffic(days=DAYS)
            self._follower = LogFollower(json_file, self.traffic)
            self._polled = 0.0
        async with self._lock:
            if time.monotonic() - self._polled >= POLL_INTERVAL:
                # What this worker logged a moment ago is counted; the wait is a thread's, never the loop's.
                await asyncio.to_thread(self.console.services.log.flush, 1.0)
                await asyncio.to_thread(self._follower.poll, self.console.services.clock.now())
                self._polled = time.monotonic()
        return self.traffic

    async def figures(self) -> dict:
        services = self.console.services
        traffic = await self._fresh_traffic()
        now = services.clock.now()
        minutes = traffic.per_minute(now)
        hours = traffic.per_hour(now)
        totals = traffic.totals(now)
        depth = await self.console.queue_depth()
        oldest = await services.store.oldest_created()
        disk = services.disk
        sample = getattr(disk, "last_sample", None) if disk is not None else None
        return {
            "minute_chart": line_chart(
                "Messages per minute, last hour (UTC)", [_clock(when) for when, _ in minutes],
                {name: [counts[name] for _, counts in minutes] for name in SERIES}, chart_id="chart-minutes"),
            "hour_chart": line_chart(
                f"Messages per hour, last {DAYS} days (UTC)", [_day_hour(when) for when, _ in hours],
                {name: [counts[name] for _, counts in hours] for name in SERIES}, chart_id="chart-hours"),
            "last_hour": {name: sum(counts[name] for _, counts in minutes) for name in SERIES},
            "last_day": {name: totals[name] for name in SERIES},
            "tls_share": (100.0 * totals["tls"] / totals["accepted"]) if totals["accepted"] else None,
            "depth": {state.value: depth.get(state, 0) for state in MessageState},
            "queued_total": sum(depth.values()),
            "oldest_age": now - oldest if oldest is not None else None,
            "disk_state": disk.state.label if disk is not None else "unknown",
            "disk_free": sample.free_bytes if sample is not None else None,
            "disk_inodes": sample.free_inodes if sample is not None else None,
            "tops": {name: traffic.top(now, name) for name in ("senders", "recipients", "refused_clients", "refused_rules")},
            "log_on": bool(services.config().log.json_file),
            "updated": now,
            "refresh": REFRESH_SECONDS,
        }


def _clock(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%H:%M")


def _day_hour(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%a %Hh")


def add_routes(router: web.UrlDispatcher, console: Console) -> None:
    dashboard = Dashboard(console)

    async def page(request: web.Request) -> web.Response:
        return console.render(request, "dashboard.html", **await dashboard.figures())

    async def live(request: web.Request) -> web.Response:
        html = console.fragment("dashboard_live.html", **await dashboard.figures())
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    router.add_get("/", page)
    router.add_get("/dashboard/live", live)
