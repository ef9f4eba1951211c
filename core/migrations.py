"""Schema steps for the SQLite store, keyed by `PRAGMA user_version`.

Each step is a small named function run once, in order, inside one transaction with the version
bump, so a database is never left between two versions. Imports nothing from Opencode.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Callable

log = logging.getLogger("opencode.store")

Migration = Callable[[sqlite3.Connection], None]


class NewerSchema(RuntimeError):
    """The file was written by a newer Opencode; reading it could misread it."""


def m001_initial(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            body TEXT NOT NULL,            -- the Session model as JSON
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE messages (
            rowid INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            session_id TEXT NOT NULL,
            role TEXT NOT NULL,
            skill TEXT,
            run_id TEXT,
            status TEXT NOT NULL,
            parts TEXT NOT NULL,           -- typed parts as JSON
            usage TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX messages_by_session ON messages (session_id, rowid);
        CREATE INDEX messages_by_status ON messages (status) WHERE status IN ('streaming', 'queued');
        CREATE TABLE events (
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            ts REAL NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (session_id, seq)
        ) WITHOUT ROWID;
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL,
            run_id TEXT,
            request_id TEXT,
            skill TEXT,
            tool TEXT NOT NULL,
            permission_class TEXT NOT NULL,
            decision TEXT NOT NULL,
            reason TEXT NOT NULL,
            ts REAL NOT NULL
        );
        CREATE INDEX audit_by_session ON audit (session_id, id);
        """
    )


def m002_event_runs(db: sqlite3.Connection) -> None:
    """Events of one session with contiguous seqs may share a row: `seq` is the first, `seq_end`
    the last (NULL for a row holding one event) and `data` a JSON array of `[ts, type, data]`."""
    db.execute("ALTER TABLE events ADD COLUMN seq_end INTEGER")


def m003_message_bodies(db: sqlite3.Connection) -> None:
    """A message row keeps the whole message as JSON in `body`, which a read returns as it is;
    rows written before (their `body` NULL) are read from their columns, as they were."""
    db.execute("ALTER TABLE messages ADD COLUMN body TEXT")


def m004_compact_deltas(db: sqlite3.Connection) -> None:
    """A row of several events may hold a `message.delta` as `[ts, text]`: the data of the row's
    last full delta with this text (`store._EventRow.params_with`). Nothing to change in the
    tables; the version says that an older Opencode, which would misread such a row, must not
    open the file."""


def m005_events_in_arrival_order(db: sqlite3.Connection) -> None:
    """Events rows in arrival order (a rowid table) with a unique index on (session_id, seq).

    Why: the table keyed by (session_id, seq) put each commit's new rows in as many B-tree leaves
    as there were sessions streaming, and a row of several events (over 1 KB) on overflow pages of
    their own; at 200 streams 64 % of the pages a commit wrote were the events table's. Rows that
    arrive in order go at the table's end, a few to a page, and only the narrow index entries land
    per session. Rows keep their seqs, so nothing a client holds changes."""
    _run_script(
        db,
        """
        CREATE TABLE events_by_arrival (
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            ts REAL NOT NULL,
            data TEXT NOT NULL,
            seq_end INTEGER
        );
        INSERT INTO events_by_arrival (session_id, seq, type, ts, data, seq_end)
            SELECT session_id, seq, type, ts, data, seq_end FROM events;
        DROP TABLE events;
        ALTER TABLE events_by_arrival RENAME TO events;
        CREATE UNIQUE INDEX events_by_session ON events (session_id, seq)
        """,
    )


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """Run `;`-separated statements one by one: `executescript` would commit mid-migration."""
    for statement in script.split(";"):
        body = "\n".join(line.split("--")[0] for line in statement.splitlines()).strip()
        if body:
            db.execute(body)


MIGRATIONS: list[Migration] = [
    m001_initial, m002_event_runs, m003_message_bodies, m004_compact_deltas, m005_events_in_arrival_order,
]


def migrate(db: sqlite3.Connection) -> int:
    """Bring `db` to the newest schema; returns the resulting version."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise NewerSchema(
            f"database schema v{version} is newer than this Opencode (v{len(MIGRATIONS)}); upgrade Opencode"
        )
    if 0 < version < len(MIGRATIONS):
        # A step may copy a table (v5 copies the event log: about 3 s a 100 MB): say why start waits.
        log.info("upgrading the database from schema v%d to v%d", version, len(MIGRATIONS))
    started = time.monotonic()
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        db.execute("BEGIN")
        try:
            step(db)
            db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    if 0 < version < len(MIGRATIONS):
        log.info("database upgraded to schema v%d in %.1f s", len(MIGRATIONS), time.monotonic() - started)
    return len(MIGRATIONS)
