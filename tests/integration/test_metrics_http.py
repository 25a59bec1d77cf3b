"""The observation endpoint over real HTTP on loopback: /metrics, /healthz, /readyz, errors."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailgate.observe.http import ObserveServer, spool_problem
from mailgate.observe.metrics import Metrics

pytestmark = pytest.mark.timeout(60)


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _with_server(check, readiness=lambda: [], host="127.0.0.1"):
    async def main():
        metrics = Metrics()
        server = ObserveServer(host, 0, metrics, readiness)
        await server.start()
        try:
            return await asyncio.to_thread(check, metrics, server.bound_port)
        finally:
            await server.stop()

    return asyncio.run(main())


def test_metrics_scrape_returns_the_registry():
    def check(metrics: Metrics, port: int):
        metrics.connection_opened("mx")
        metrics.transaction_accepted("inbound", "hosted_domain", 2048, "TLSv1.3 X", 0.002)
        status, headers, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for s in families["mailgate_transactions_accepted"].samples}
        assert samples[("mailgate_transactions_accepted_total",
                        (("direction", "inbound"), ("rule", "hosted_domain")))] == 1
        assert families["mailgate_connections_open"].samples[0].value == 1

    _with_server(check)


def test_healthz_and_readyz():
    problems: list[str] = []

    def check(_metrics, port: int):
        assert _get(f"http://127.0.0.1:{port}/healthz")[::2] == (200, b"ok\n")
        assert _get(f"http://127.0.0.1:{port}/readyz")[::2] == (200, b"ready\n")
        problems.extend(["listener mx is not listening", "queue in back-pressure"])
        status, _headers, body = _get(f"http://127.0.0.1:{port}/readyz?verbose=1")
        assert status == 503
        assert body.decode().splitlines() == ["listener mx is not listening", "queue in back-pressure"]

    _with_server(check, readiness=lambda: list(problems))


def test_a_failing_readiness_check_is_not_ready():
    def broken():
        raise OSError("spool gone")

    def check(_metrics, port: int):
        status, _headers, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503 and b"spool gone" in body

    _with_server(check, readiness=broken)


def test_head_not_found_wrong_method_and_garbage():
    def check(_metrics, port: int):
        status, headers, body = _get(f"http://127.0.0.1:{port}/healthz", method="HEAD")
        assert status == 200 and body == b"" and headers["Content-Length"] == "3"
        assert _get(f"http://127.0.0.1:{port}/nothing")[0] == 404
        status, headers, _body = _get(f"http://127.0.0.1:{port}/metrics", method="POST")
        assert status == 405 and headers["Allow"] == "GET, HEAD"
        assert _raw(port, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert _raw(port, b"GET /metrics HTTP/1.1\r\n" + b"X-Big: " + b"a" * 10000 + b"\r\n\r\n").startswith(
            b"HTTP/1.1 431 ")

    _with_server(check)


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1")

    def check(_metrics, port: int):
        assert _get(f"http://[::1]:{port}/healthz")[0] == 200

    _with_server(check, host="::1")


def test_spool_problem(tmp_path):
    assert spool_problem(str(tmp_path)) is None
    assert "missing" in spool_problem(str(tmp_path / "absent"))
