"""bench/report.py: a cluster run's table has a column and a ratio to Postfix for every setup,
and the setups table one row per setup; a run of mailgate and Postfix alone keeps its old shape."""

from __future__ import annotations

from bench import report

SERVERS = ["mailgate", "mailgate-pg", "mailgate-pg-2nodes", "postfix"]
END_TO_END = {"mailgate": 500.0, "mailgate-pg": 400.0, "mailgate-pg-2nodes": 300.0, "postfix": 250.0}


def results(servers: list[str]) -> dict:
    throughput = [
        {"rep": rep, "server": server, "size": 4096, "sessions": 100, "accept_msgs_per_s": END_TO_END[server] + rep,
         "end_to_end_msgs_per_s": END_TO_END[server] + rep, "peak_pss_mib": 100.0, "peak_rss_sum_mib": 150.0,
         "cpu_s_per_1000_msgs": 2.0}
        for rep in (-10, 0, 10) for server in servers
    ]
    latency = [{"rep": 1, "server": server, "size": 4096, "p50_ms": 1.5, "p99_ms": 9.0} for server in servers]
    # the third repetition of the two-node setup failed: no figure, counted as attempted
    if "mailgate-pg-2nodes" in servers:
        throughput.append({"rep": 4, "server": "mailgate-pg-2nodes", "size": 4096, "sessions": 100, "error": "x"})
    return {"throughput": throughput, "latency": latency, "connections": [], "baseline": [],
            "fsync": {"append_fsync_per_s": 500.0}}


def test_every_setup_gets_a_column_and_its_ratio_to_postfix() -> None:
    runs = results(SERVERS)
    rows = report.summarise(runs, SERVERS)
    end_to_end = next(row for row in rows if row["metric"] == "end_to_end_msgs_per_s")
    assert end_to_end["ratios_to_postfix"] == {"mailgate": 2.0, "mailgate-pg": 1.6, "mailgate-pg-2nodes": 1.2}
    table = report.markdown_table(rows, runs)
    header = table.splitlines()[0]
    assert header == ("| metric | case | mailgate | mailgate 1 node PostgreSQL | mailgate 2 nodes 1 PostgreSQL "
                      "| Postfix | mailgate/Postfix | mailgate 1 node PostgreSQL/Postfix "
                      "| mailgate 2 nodes 1 PostgreSQL/Postfix |")
    line = next(text for text in table.splitlines() if text.startswith("| end-to-end"))
    assert line.endswith("| 500 | 400 | 300 (3 of 4) | 250 | 2 | 1.6 | 1.2 |"), line


def test_the_setups_table_has_one_row_per_setup_with_latency() -> None:
    rows = report.summarise(results(SERVERS), SERVERS)
    lines = report.setups_table(rows).splitlines()
    assert len(lines) == 2 + len(SERVERS)
    assert lines[2] == "| mailgate 1 node SQLite | 4 KiB, C=100 | 500 | 500 | 2 | 100 | 1.5 | 9 | 2 |"
    assert lines[4].startswith("| mailgate 2 nodes 1 PostgreSQL | 4 KiB, C=100 | 300 (3 of 4) | 300 (3 of 4) |")
    assert lines[5].endswith("| 1 |")  # Postfix against itself


def test_mailgate_and_postfix_alone_keep_the_two_column_table() -> None:
    runs = results(["mailgate", "postfix"])
    rows = report.summarise(runs, ["mailgate", "postfix"])
    assert report.markdown_table(rows, runs).splitlines()[0] == "| metric | case | mailgate | Postfix | mailgate/Postfix |"
    assert report.shown_servers(rows) == ["mailgate", "postfix"]


def test_a_dkim_run_compares_mailgate_with_postfix_and_with_postfix_signing_through_opendkim() -> None:
    servers = ["mailgate", "postfix-dkim", "postfix"]
    END_TO_END["postfix-dkim"] = 200.0
    try:
        rows = report.summarise(results(servers), servers)
    finally:
        del END_TO_END["postfix-dkim"]
    lines = report.setups_table(rows).splitlines()
    assert lines[0].endswith("| end-to-end vs Postfix | end-to-end vs Postfix + OpenDKIM |")
    assert lines[2].startswith("| mailgate 1 node SQLite |") and lines[2].endswith("| 2 | 2.5 |")
    assert lines[3].startswith("| Postfix + OpenDKIM |") and lines[3].endswith("| 0.8 | 1 |")
