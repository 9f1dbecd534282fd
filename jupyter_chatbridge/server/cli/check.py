"""`jupyter chatbridge check`: is a store file sound, and what exactly is wrong if not.

Read-only, so it is safe while a server runs. Each check is a line of the report;
any failed check makes the report (and the command's exit status) a failure.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field

from .storefile import SCHEMA_VERSION, StoreFile, StoreFileError

MAX_DETAILS = 10
"""Problems listed per check; the rest are counted."""


@dataclass
class Check:
    """One line of the report: a name and the problems found (none: passed)."""

    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


@dataclass
class CheckReport:
    """Everything `check` found about one file."""

    path: str
    checks: list[Check] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return all(check.ok for check in self.checks)

    def text(self) -> str:
        """The report as the command prints it."""
        lines = [f"store {self.path}" + (f": {self.summary}" if self.summary else "")]
        for check in self.checks:
            lines.append(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}")
            shown = check.problems[:MAX_DETAILS]
            lines.extend(f"        {problem}" for problem in shown)
            if len(check.problems) > len(shown):
                lines.append(f"        ... and {len(check.problems) - len(shown)} more")
        failed = sum(not check.ok for check in self.checks)
        lines.append("the store is sound" if not failed else f"{failed} check(s) failed")
        return "\n".join(lines) + "\n"


def check_store(store: StoreFile) -> CheckReport:
    """Run every check on `store`; a file SQLite cannot read at all is one failed check."""
    report = CheckReport(str(store.path))
    integrity = Check("SQLite integrity (PRAGMA integrity_check)")
    report.checks.append(integrity)
    try:
        with store.snapshot() as conn:
            found = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
            if found != ["ok"]:
                integrity.problems.extend(found)
            layout = Check(f"schema (the tables of version {SCHEMA_VERSION})")
            report.checks.append(layout)
            try:
                store.verify_layout(conn)
            except StoreFileError as exc:
                layout.problems.append(str(exc))
                return report
            report.checks.append(Check("every row can be read"))
            report.checks[-1:-1] = _check_rows(conn, report)
    except StoreFileError as exc:
        # SQLite could not read on: the check that was running fails with its reason.
        report.checks[-1].problems.append(str(exc.__cause__ or exc))
    return report


def _check_rows(conn: sqlite3.Connection, report: CheckReport) -> list[Check]:
    sessions = {row[0] for row in conn.execute("SELECT id FROM sessions")}
    settings = Check("session settings are JSON objects")
    for session_id, text in conn.execute("SELECT id, settings FROM sessions"):
        if not isinstance(_json(text), dict):
            settings.problems.append(f"session {session_id!r}: settings are not a JSON object")

    seqs = Check("event seqs contiguous in every session")
    events = Check("each event's JSON matches its row (type, sessionId, seq)")
    orphans = Check("no rows of deleted sessions")
    user_messages: dict[tuple[str, int], str] = {}
    ranges: dict[str, tuple[int, int]] = {}
    previous: dict[str, int] = {}
    count = 0
    for session_id, seq, kind, data in conn.execute(
        "SELECT session_id, seq, type, data FROM events ORDER BY session_id, seq"
    ):
        count += 1
        if session_id not in sessions:
            if session_id not in previous:
                orphans.problems.append(f"events of unknown session {session_id!r}")
            previous[session_id] = seq
            continue
        last = previous.get(session_id)
        if last is None and seq < 1:
            seqs.problems.append(f"session {session_id!r}: seq {seq} (seqs start at 1)")
        elif last is not None and seq != last + 1:
            seqs.problems.append(
                f"session {session_id!r}: seq {last} is followed by {seq} "
                f"({seq - last - 1} missing)"
            )
        previous[session_id] = seq
        first = ranges.get(session_id, (seq, seq))[0]
        ranges[session_id] = (first, seq)
        body = _json(data)
        if not isinstance(body, dict) or (
            body.get("type"),
            body.get("sessionId"),
            body.get("seq"),
        ) != (kind, session_id, seq):
            events.problems.append(f"session {session_id!r} seq {seq}: JSON does not match row")
            continue
        if kind == "user_message":
            user_messages[(session_id, seq)] = str(body.get("clientMsgId"))

    receipts = Check("receipts point at their user messages")
    receipt_count = 0
    orphan_receipts: defaultdict[str, int] = defaultdict(int)
    for session_id, client_msg_id, seq in conn.execute(
        "SELECT session_id, client_msg_id, seq FROM receipts ORDER BY session_id, seq"
    ):
        receipt_count += 1
        if session_id not in sessions:
            orphan_receipts[session_id] += 1
            continue
        first, last = ranges.get(session_id, (seq + 1, 0))
        if seq < first:
            continue  # its event was trimmed from history: the receipt rightly outlives it
        if seq > last:
            receipts.problems.append(
                f"session {session_id!r}: receipt {client_msg_id!r} points at seq {seq}, "
                f"past the last event ({last})"
            )
        elif user_messages.get((session_id, seq)) != client_msg_id:
            receipts.problems.append(
                f"session {session_id!r}: receipt {client_msg_id!r} points at seq {seq}, "
                "which is not that user message"
            )
    orphans.problems.extend(
        f"{n} receipts of unknown session {s!r}" for s, n in orphan_receipts.items()
    )
    report.summary = (
        f"{len(sessions)} sessions, {count} events, {receipt_count} receipts, "
        f"schema {SCHEMA_VERSION}"
    )
    return [settings, seqs, events, receipts, orphans]


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None
