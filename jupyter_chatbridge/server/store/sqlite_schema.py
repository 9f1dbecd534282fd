"""The SQLite store's tables and the statements its writes run (sqlite.py)."""

from __future__ import annotations

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    session_id TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (session_id, client_msg_id)
) WITHOUT ROWID;
"""

# One statement list per kind of write; a run of writes of one kind is one executemany.
STATEMENTS: dict[str, tuple[str, ...]] = {
    "append": ("INSERT OR REPLACE INTO events (session_id, seq, type, data) VALUES (?, ?, ?, ?)",),
    "remember": (
        "INSERT OR REPLACE INTO receipts (session_id, client_msg_id, seq) VALUES (?, ?, ?)",
    ),
    "create": (
        "DELETE FROM events WHERE session_id = :id",
        "DELETE FROM receipts WHERE session_id = :id",
        "DELETE FROM sessions WHERE id = :id",
        "INSERT OR REPLACE INTO sessions (id, created, settings) VALUES (:id, :created, :settings)",
    ),
    "delete": (
        "DELETE FROM events WHERE session_id = :id",
        "DELETE FROM receipts WHERE session_id = :id",
        "DELETE FROM sessions WHERE id = :id",
    ),
    "trim": (
        # MIN with the newest seq: a trim never removes the newest event (last_seq lives on).
        "DELETE FROM events WHERE session_id = :id AND seq < MIN(:events,"
        " (SELECT MAX(seq) FROM events WHERE session_id = :id))",
        "DELETE FROM receipts WHERE session_id = :id AND seq < :receipts",
    ),
}

# All the events of a batch go in with one statement (one JSON array parameter),
# so the writer thread needs the GIL a handful of times per commit, not once per row:
# each GIL hand-off costs the event loop thread a context switch.
BULK_APPEND = (
    "INSERT OR REPLACE INTO events (session_id, seq, type, data) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
    "json_extract(value, '$[2]'), json_extract(value, '$[3]') FROM json_each(?)"
)
