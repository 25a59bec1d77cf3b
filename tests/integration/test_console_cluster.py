"""The web console of one cluster node shows the whole cluster's queue (issue 16, "the web
console's queue view shows the whole queue across nodes").

Two real mailgate nodes run in process on one private PostgreSQL queue; each accepts one message
over SMTP for a hosted domain whose next hop refuses connections, so both stay queued. An admin
logged in to node A's console over HTTP sees both messages in the queue list, opens the one node
B accepted, and holds it: the hold is in the shared database, and the dashboard's queue depth
counts both nodes' mail.
"""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

import pytest

from mailgate.queue.store import MessageState, QueueFilter
from tests.conftest import free_port
from tests.integration.test_console_http import ADMIN, PASSWORD
from tests.support.config_text import cluster_queue
from tests.support.console_client import ConsoleClient
from tests.support.console_server import add_admin, console_config
from tests.support.mailgate_server import InProcessMailgate
from tests.support.postgres import PostgresInstance

pytestmark = pytest.mark.timeout(120)


def send(port: int, sender: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail(sender, ["b@hosted.test"], f"Message-ID: <{sender}>\r\nSubject: hi\r\n\r\nhello\r\n")


def test_one_nodes_console_lists_and_acts_on_every_nodes_messages(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pg: PostgresInstance = postgres_server
    dsn = pg.new_database()
    secret = pg.write_password_file(tmp_path / "db.password")
    for name in ("node-a", "node-b"):
        (tmp_path / name).mkdir()
        add_admin(tmp_path / name / "users", ADMIN, PASSWORD)
    console_port, port_a, port_b = free_port(), free_port(), free_port()
    text_a = console_config(tmp_path / "node-a", console_port, port_a, cluster_queue(dsn, secret, "node-a", "30s"))
    text_b = console_config(tmp_path / "node-b", free_port(), port_b, cluster_queue(dsn, secret, "node-b", "30s"))
    with InProcessMailgate(text_a) as node_a, InProcessMailgate(text_b):
        send(port_a, "from-a@example.net")
        send(port_b, "from-b@example.net")
        rows = node_a.call(node_a.app.store.list(QueueFilter()))
        by_sender = {row.sender: row.queue_id for row in rows}
        assert set(by_sender) == {"from-a@example.net", "from-b@example.net"}, rows

        client = ConsoleClient(console_port)
        assert client.log_in(ADMIN, PASSWORD).status == 303
        listed = client.get("/queue")
        assert listed.status == 200
        assert set(re.findall(r'data-queue-id="([^"]+)"', listed.body)) == set(by_sender.values()), listed.body
        assert "from-b@example.net" in listed.body

        theirs = by_sender["from-b@example.net"]
        view = client.get(f"/queue/{theirs}")
        assert view.status == 200 and "from-b@example.net" in view.body
        assert client.post(f"/queue/{theirs}/hold", {"csrf": client.csrf()}).status == 303
        held = node_a.call(node_a.app.store.list(QueueFilter(state=MessageState.HELD)))
        assert [row.queue_id for row in held] == [theirs]
        assert theirs in client.get("/queue?state=held").body
        live = client.get("/dashboard/live").body  # the depth is the cluster's too
        assert re.search(r'id="depth-held">1<', live), live
        others = sum(int(n) for n in re.findall(r'id="depth-(?:queued|active|deferred)">(\d+)<', live))
        assert others == 1, live
