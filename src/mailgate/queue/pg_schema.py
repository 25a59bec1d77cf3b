"""The PostgreSQL schema of the cluster queue, its migrations, and the checks made at connect.

Owns: the tables (messages, recipients, bodies, nodes), the lease-token sequence, the version
table `mailgate_schema` with the steps that bring a database from one version to the next
(`MIGRATIONS`), and what a connection must find before it may serve: a schema of exactly this
version, and `synchronous_commit` not off (a COMMIT that returns before its WAL is flushed would
let a 250 go out for a message a database crash then loses).
Must not: decide when to write, hold connections, or know the store's operations
(pg_queries.py holds the statements, postgres_store.py the connections).

A fresh, empty database is given the whole schema when the first node starts; an existing one is
changed only by `mailgate queue migrate` (one operator action for the whole cluster, done under an
advisory lock so two nodes never migrate at once). A node refuses to start against a database
whose schema is older (run the migration) or newer (upgrade the node) than its own.
"""

from __future__ import annotations

import psycopg

SCHEMA_VERSION = 1
# Any constant: the advisory lock held while the schema is created or migrated.
MIGRATION_LOCK = 0x6D61696C  # "mail"

# Bodies are stored as rows of at most this many bytes: a large message is written and read
# a piece at a time and never needs one buffer of its whole size (docs/cluster.md "Bodies").
BODY_ROW_BYTES = 256 * 1024

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS mailgate_schema (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL
)"""

# MIGRATIONS[n] takes a database from version n to n + 1 (version 0: no schema at all).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # Fencing tokens: every claim takes a new, larger number; an outcome is recorded only
        # with the token of the claim that is current (docs/cluster.md "Leases").
        "CREATE SEQUENCE mailgate_lease_token",
        """CREATE TABLE messages (
            queue_id text PRIMARY KEY,
            sender_local text,                  -- NULL: the null reverse-path <>
            sender_domain text,
            sender_literal smallint NOT NULL DEFAULT 0,
            sender_route smallint NOT NULL DEFAULT 0,
            sender_text text NOT NULL,          -- '' for <>
            body_type text NOT NULL,
            smtputf8 smallint NOT NULL,
            size_declared bigint,
            ret text,
            envid text,
            meta text NOT NULL,                 -- JSON of MessageMeta
            size bigint NOT NULL,
            created double precision NOT NULL,
            held smallint NOT NULL DEFAULT 0,
            hold_reason text NOT NULL DEFAULT '',
            delay_notified smallint NOT NULL DEFAULT 0,
            first_attempt double precision,
            accepted_by text NOT NULL,          -- the node that gave the 250
            lease_node text,                    -- NULL: not leased
            lease_owner text,                   -- node name, process and store of the claim
            lease_expires double precision,
            lease_token bigint                  -- of the latest claim, kept after its release
        )""",
        "CREATE INDEX messages_created ON messages (created)",
        "CREATE INDEX messages_lease_owner ON messages (lease_owner) WHERE lease_owner IS NOT NULL",
        """CREATE TABLE recipients (
            queue_id text NOT NULL REFERENCES messages (queue_id) ON DELETE CASCADE,
            idx integer NOT NULL,
            local text NOT NULL,
            domain text NOT NULL,
            literal smallint NOT NULL,
            had_source_route smallint NOT NULL,
            address_text text NOT NULL,
            notify text NOT NULL,               -- NOTIFY values in order, comma separated
            orcpt text,
            state text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            next_attempt double precision NOT NULL,
            reply_code integer,
            reply_enhanced text,
            reply_text text,
            remote_mta text,
            PRIMARY KEY (queue_id, idx)
        )""",
        "CREATE INDEX recipients_due ON recipients (next_attempt) WHERE state = 'queued'",
        """CREATE TABLE bodies (
            queue_id text NOT NULL REFERENCES messages (queue_id) ON DELETE CASCADE,
            seq integer NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (queue_id, seq)
        )""",
        # Mail is mostly compressed already (images, archives, base64): TOAST compression would
        # spend CPU on every commit for little gain, so bodies are stored out of line as they are.
        "ALTER TABLE bodies ALTER COLUMN data SET STORAGE EXTERNAL",
        """CREATE TABLE nodes (
            name text PRIMARY KEY,
            instance text NOT NULL,             -- the process that heartbeats under this name
            started double precision NOT NULL,
            heartbeat double precision NOT NULL
        )""",
        # One attempt's outcome in one statement (record, and with p_release finish): fenced by
        # the claim's token, then the recipients' states, then the lease returned and the message
        # deleted when no recipient is left queued. Returns 'gone', 'lost:<token>', 'recorded',
        # 'kept' or 'deleted'. A function, so an outcome costs one statement, not five.
        """CREATE FUNCTION mailgate_outcome(
            p_queue_id text, p_token bigint, p_idx int[], p_state text[], p_next float8[],
            p_code int[], p_enhanced text[], p_text text[], p_mta text[], p_now float8,
            p_release boolean, p_delay_notified boolean
        ) RETURNS text LANGUAGE plpgsql AS $$
        DECLARE
            current_token bigint;
        BEGIN
            SELECT lease_token INTO current_token FROM messages WHERE queue_id = p_queue_id FOR UPDATE;
            IF NOT FOUND THEN
                RETURN 'gone';
            END IF;
            IF p_token IS NOT NULL AND current_token IS DISTINCT FROM p_token THEN
                RETURN 'lost:' || coalesce(current_token::text, '');
            END IF;
            IF cardinality(p_idx) > 0 THEN
                UPDATE recipients r SET state = u.state, attempts = r.attempts + 1,
                    next_attempt = u.next_attempt, reply_code = u.code, reply_enhanced = u.enhanced,
                    reply_text = u.text, remote_mta = u.mta
                FROM unnest(p_idx, p_state, p_next, p_code, p_enhanced, p_text, p_mta)
                    AS u(idx, state, next_attempt, code, enhanced, text, mta)
                WHERE r.queue_id = p_queue_id AND r.idx = u.idx;
                UPDATE messages SET first_attempt = coalesce(first_attempt, p_now) WHERE queue_id = p_queue_id;
            END IF;
            IF NOT p_release THEN
                RETURN 'recorded';
            END IF;
            IF NOT EXISTS (SELECT 1 FROM recipients WHERE queue_id = p_queue_id AND state = 'queued') THEN
                DELETE FROM messages WHERE queue_id = p_queue_id;
                RETURN 'deleted';
            END IF;
            UPDATE messages SET lease_node = NULL, lease_owner = NULL, lease_expires = NULL,
                delay_notified = CASE WHEN p_delay_notified THEN 1 ELSE delay_notified END
            WHERE queue_id = p_queue_id;
            RETURN 'kept';
        END $$""",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION


class SchemaError(RuntimeError):
    """The database's schema is not the one this node speaks: newer, older, or unreadable."""


class UnsafeDatabaseError(RuntimeError):
    """The database would acknowledge commits it has not made durable (synchronous_commit off)."""


async def schema_version(connection: psycopg.AsyncConnection) -> int:
    """0 for a database without mailgate's tables."""
    found = await (await connection.execute("SELECT to_regclass('mailgate_schema')")).fetchone()
    if found is None or found[0] is None:
        return 0
    row = await (await connection.execute("SELECT version FROM mailgate_schema")).fetchone()
    return 0 if row is None else int(row[0])


async def check_durability(connection: psycopg.AsyncConnection) -> None:
    """Refuse a session whose commits return before the WAL is flushed (see the module doc)."""
    row = await (await connection.execute("SHOW synchronous_commit")).fetchone()
    setting = "" if row is None else str(row[0])
    if setting == "off":
        raise UnsafeDatabaseError(
            "PostgreSQL has synchronous_commit = off: a database crash could lose mail already "
            "acknowledged with 250; set it to on (or local, remote_write, remote_apply)"
        )


async def check_schema(connection: psycopg.AsyncConnection, *, create: bool) -> None:
    """A node's check at start: the schema is this version. With `create`, an empty database is
    given the whole schema (a new cluster's first start); anything else is left to `migrate`."""
    version = await schema_version(connection)
    if version == 0 and create:
        await migrate(connection)
        version = await schema_version(connection)
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"the queue database has schema version {version}, newer than this mailgate's "
            f"{SCHEMA_VERSION}: upgrade this node"
        )
    if version < SCHEMA_VERSION:
        raise SchemaError(
            f"the queue database has schema version {version}, older than this mailgate's "
            f"{SCHEMA_VERSION}: run `mailgate queue migrate`"
        )


async def migrate(connection: psycopg.AsyncConnection) -> tuple[int, int]:
    """Bring the schema to SCHEMA_VERSION in one transaction; returns (from, to) versions.

    `connection` must be in autocommit mode. A newer schema is left alone (SchemaError).
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await connection.execute(VERSION_TABLE)
        before = await schema_version(connection)
        if before > SCHEMA_VERSION:
            raise SchemaError(
                f"the queue database has schema version {before}, newer than this mailgate's "
                f"{SCHEMA_VERSION}"
            )
        for step in range(before, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                await connection.execute(statement)
        await connection.execute(
            "INSERT INTO mailgate_schema (version) VALUES (%s)"
            " ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
            (SCHEMA_VERSION,),
        )
    return before, SCHEMA_VERSION
