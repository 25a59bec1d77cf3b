"""Message bodies in PostgreSQL: bytea rows against large objects, measured (docs/cluster.md).

    .venv/bin/python -m bench.pg_bodies        # as root or a user PostgreSQL's initdb accepts

Owns: a private PostgreSQL (tests/support/postgres.py, fsync on), and for each body size the time
to store N bodies, one transaction each as a commit does, and to read them back in pieces of
256 KiB, (a) as rows of at most 256 KiB in a bytea column (the cluster store's layout) and (b) as
large objects written and read with lo_put / lo_get. Prints a Markdown table.
Must NOT: be part of the test suite (it measures, it asserts nothing).
"""

from __future__ import annotations

import os
import time

import psycopg

from tests.support.postgres import PASSWORD, start_postgres

PIECE = 256 * 1024
TOTAL_BYTES = 64 * 1024 * 1024  # per size and layout: bounded run time
SIZES = (4 * 1024, 100 * 1024, 1024 * 1024, 10 * 1024 * 1024)


def pieces(body: bytes) -> list[bytes]:
    return [body[start:start + PIECE] for start in range(0, len(body), PIECE)]


def bytea_round(connection: psycopg.Connection, bodies: list[bytes]) -> tuple[float, float]:
    started = time.perf_counter()
    for number, body in enumerate(bodies):
        with connection.transaction():
            connection.cursor().executemany(
                "INSERT INTO body_rows (id, seq, data) VALUES (%s, %s, %s)",
                [(number, seq, piece) for seq, piece in enumerate(pieces(body))],
            )
    written = time.perf_counter()
    for number, body in enumerate(bodies):
        read = b"".join(bytes(row[0]) for row in connection.execute(
            "SELECT data FROM body_rows WHERE id = %s ORDER BY seq", (number,)))
        assert read == body
    return written - started, time.perf_counter() - written


def large_object_round(connection: psycopg.Connection, bodies: list[bytes]) -> tuple[float, float]:
    oids = []
    started = time.perf_counter()
    for body in bodies:
        with connection.transaction():
            (oid,) = connection.execute("SELECT lo_create(0)").fetchone()  # type: ignore[misc]
            for offset, piece in zip(range(0, len(body), PIECE), pieces(body)):
                connection.execute("SELECT lo_put(%s, %s, %s)", (oid, offset, piece))
            oids.append(oid)
    written = time.perf_counter()
    for oid, body in zip(oids, bodies):
        read = b"".join(
            bytes(connection.execute("SELECT lo_get(%s, %s, %s)", (oid, offset, PIECE)).fetchone()[0])  # type: ignore[index]
            for offset in range(0, len(body), PIECE)
        )
        assert read == body
    return written - started, time.perf_counter() - written


def main() -> int:
    server = start_postgres(fsync=True)
    try:
        dsn = server.new_database()
        rows = ["| body size | messages | bytea rows: store ms/msg | read ms/msg | large objects: store ms/msg | read ms/msg |",
                "| --- | --- | --- | --- | --- | --- |"]
        with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as connection:
            connection.execute("CREATE TABLE body_rows (id int, seq int, data bytea, PRIMARY KEY (id, seq))")
            connection.execute("ALTER TABLE body_rows ALTER COLUMN data SET STORAGE EXTERNAL")
            for size in SIZES:
                count = max(5, min(500, TOTAL_BYTES // size))
                bodies = [os.urandom(size) for _ in range(count)]
                connection.execute("TRUNCATE body_rows")
                b_write, b_read = bytea_round(connection, bodies)
                l_write, l_read = large_object_round(connection, bodies)
                connection.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
                per = lambda seconds: f"{seconds / count * 1000:.2f}"  # noqa: E731
                rows.append(f"| {size // 1024} KiB | {count} | {per(b_write)} | {per(b_read)} "
                            f"| {per(l_write)} | {per(l_read)} |")
        print("\n".join(rows))
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
