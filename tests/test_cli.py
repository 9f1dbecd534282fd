"""`jupyter chatbridge` run as a subprocess on stores written by real server processes.

A module fixture runs a real `jupyter server` once (SlowAgent, default store path),
records a few sessions through its REST API and stops it; the tests work on copies
of that file. One test runs the command while a server holds its store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, TypeVar

import nbformat
import pytest

from jupyter_chatbridge.protocol.export import conversation, ending, render
from jupyter_chatbridge.server.cli import storefile
from jupyter_chatbridge.server.store import SCHEMA_VERSION

from .server_process import ServerProcess
from .support import WAIT

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
Events = list[dict[str, Any]]


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a private loop (these tests are sync: servers are processes)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(make())
    finally:
        loop.close()


def rest(server: ServerProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{server.url}chatbridge/api/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {server.token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode() or "null")


def history(server: ServerProcess, session_id: str) -> Events:
    code, body = rest(server, "GET", f"sessions/{session_id}/events?after=0")
    assert code == 200, body
    return list(body["events"])


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll another process's state (a server, a file) until it holds."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def answered(server: ServerProcess, session_id: str, answers: int) -> None:
    wait_until(
        lambda: sum(e["type"] == "message_end" for e in history(server, session_id)) >= answers,
        f"{answers} answers in {session_id}",
    )


def exchange(server: ServerProcess, session_id: str, *texts: str) -> None:
    """Send each text and wait for its answer before the next: a plain conversation."""
    for number, text in enumerate(texts, 1):
        send = {"sessionId": session_id, "clientMsgId": f"m{number}", "text": text}
        code, body = rest(server, "POST", "send", send)
        assert code == 202, body
        answered(server, session_id, number)


def make_server(root: Path, delay: float = 0.01) -> ServerProcess:
    """A server on the default store path under `root`, answering with `SlowAgent`."""
    root.mkdir(parents=True, exist_ok=True)
    agent = "--ChatBridgeApp.agent_class=tests.slow_agent.SlowAgent"
    return ServerProcess(root, agent, f"--SlowAgent.delay={delay}")


@dataclass
class Recorded:
    root: Path
    """The folder the server ran in, with its JUPYTER_DATA_DIR (data/) inside."""
    store: Path
    histories: dict[str, Events]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """Sessions written by a real server on its default store, which has since stopped."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    server = make_server(tmp_path_factory.mktemp("recorded"))
    try:
        run_async(server.start)
        assert rest(server, "POST", "sessions", {"sessionId": "demo"})[0] == 201
        exchange(server, "demo", "hello there", "what is *markdown*?")
        failing = {"sessionId": "broken", "settings": {"fail": "model backend unavailable"}}
        assert rest(server, "POST", "sessions", failing)[0] == 201
        exchange(server, "broken", "anyone there")
        assert rest(server, "POST", "sessions", {"sessionId": "empty"})[0] == 201
        histories = {s: history(server, s) for s in ("demo", "broken", "empty")}
    finally:
        server.stop()
    yield Recorded(server.root, default_store(server.root), histories)


def default_store(root: Path) -> Path:
    """The one store a server in `root` made where ChatBridgeApp.store_path's default said."""
    (store,) = (root / "data").glob("**/sessions.sqlite3")  # JUPYTER_DATA_DIR is root/data
    return store


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`jupyter chatbridge ARGS` in a subprocess running this tree's code."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "jupyter_chatbridge.server.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=60,
    )


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """A refusal: exit status 1, one line on stderr that says why."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def copy_store(recorded: Recorded, tmp_path: Path) -> Path:
    target = tmp_path / "sessions.sqlite3"
    shutil.copyfile(recorded.store, target)
    return target


def digest(directory: Path) -> dict[str, str]:
    """Every file in the store's directory and its content: to show nothing changed."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


# -- reading --------------------------------------------------------------------------------


def test_sessions_lists_each_session_with_its_events(recorded: Recorded, tmp_path: Path) -> None:
    store = copy_store(recorded, tmp_path)
    result = cli("sessions", f"--store-path={store}")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["ID", "EVENTS", "LAST", "ACTIVITY", "CREATED", "RUNNING"]
    table = {row.split()[0]: row.split() for row in rows}
    assert list(table) == ["demo", "broken", "empty"]  # creation order
    demo = recorded.histories["demo"]
    assert table["demo"][1:4] == [str(len(demo)), f"#{demo[-1]['seq']}", "message_end"]
    assert table["demo"][-1] == "no"
    assert table["empty"][1:3] == ["0", "-"]


def test_show_prints_who_said_what_and_how_each_answer_ended(
    recorded: Recorded, tmp_path: Path
) -> None:
    store = copy_store(recorded, tmp_path)
    demo = cli("show", "demo", f"--store-path={store}")
    assert demo.returncode == 0, demo.stderr
    user, answer = (
        [e["seq"] for e in recorded.histories["demo"] if e["type"] == kind]
        for kind in ("user_message", "message_start")
    )
    assert demo.stdout.splitlines() == [
        "session demo",
        "",
        f"user [seq {user[0]}]",
        "  hello there",
        "",
        f"agent [seq {answer[0]}, complete]",
        "  Slow: hello there",
        "",
        f"user [seq {user[1]}]",
        "  what is *markdown*?",
        "",
        f"agent [seq {answer[1]}, complete]",
        "  Slow: what is *markdown*?",
    ]
    broken = cli("show", "broken", f"--store-path={store}")
    assert "agent [seq 2, error]" in broken.stdout
    assert "  ! agent failed: model backend unavailable" in broken.stdout


def test_jsonl_export_is_the_servers_history(recorded: Recorded, tmp_path: Path) -> None:
    store = copy_store(recorded, tmp_path)
    result = cli("export", "demo", "--format=jsonl", f"--store-path={store}")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == recorded.histories["demo"]


def test_markdown_export_is_the_conversation(recorded: Recorded, tmp_path: Path) -> None:
    store = copy_store(recorded, tmp_path)
    out = tmp_path / "demo.md"
    result = cli("export", "demo", "--format=markdown", "-o", str(out), f"--store-path={store}")
    assert result.returncode == 0, result.stderr
    assert out.read_text() == (
        "# Chat session `demo`\n\n"
        "**User**\n\nhello there\n\n"
        "**Agent**\n\nSlow: hello there\n\n"
        "**User**\n\nwhat is *markdown*?\n\n"
        "**Agent**\n\nSlow: what is *markdown*?\n"
    )
    broken = cli("export", "broken", f"--store-path={store}")  # markdown is the default
    assert broken.stdout.endswith(
        "**Agent**\n\nSlow:\n\n"
        "*The answer ended with an error: agent failed: model backend unavailable*\n"
    )
    # The same renderer the Python client uses, on the REST history: the same bytes.
    assert out.read_text() == render("markdown", "demo", recorded.histories["demo"])


def test_ipynb_export_opens_and_validates(recorded: Recorded, tmp_path: Path) -> None:
    store = copy_store(recorded, tmp_path)
    out = tmp_path / "demo.ipynb"
    result = cli("export", "demo", "--format", "ipynb", "-o", str(out), f"--store-path={store}")
    assert result.returncode == 0, result.stderr
    notebook = nbformat.read(out, as_version=4)
    nbformat.validate(notebook)
    assert [cell.cell_type for cell in notebook.cells] == ["markdown"] * 5
    sources = [cell.source for cell in notebook.cells]
    assert sources[0] == "# Chat session `demo`"
    assert sources[1:] == [
        "**User**\n\nhello there",
        "**Agent**\n\nSlow: hello there",
        "**User**\n\nwhat is *markdown*?",
        "**Agent**\n\nSlow: what is *markdown*?",
    ]
    assert notebook.metadata["chatbridge"] == {"sessionId": "demo"}


def test_the_default_and_the_configured_store_are_found_as_the_server_finds_them(
    recorded: Recorded, tmp_path: Path
) -> None:
    # Where the server ran (its folder, its JUPYTER_DATA_DIR): the same store, by default.
    env = {"JUPYTER_DATA_DIR": str(recorded.root / "data")}
    by_default = cli("sessions", env=env, cwd=recorded.root)
    assert by_default.returncode == 0, by_default.stderr
    assert "demo" in by_default.stdout
    from_elsewhere = cli("show", "demo", f"--root-dir={recorded.root}", env=env, cwd=tmp_path)
    assert from_elsewhere.returncode == 0, from_elsewhere.stderr
    # Another folder is another server's store: there is none.
    refused(cli("sessions", env=env, cwd=tmp_path), "no session store at")
    store = copy_store(recorded, tmp_path)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "jupyter_server_config.py").write_text(
        f"c.ChatBridgeApp.store_path = {str(store)!r}\n"
    )
    configured = cli(
        "show", "demo", env={"JUPYTER_CONFIG_DIR": str(config_dir), "JUPYTER_DATA_DIR": "/nowhere"}
    )
    assert configured.returncode == 0, configured.stderr
    assert "hello there" in configured.stdout
    nowhere = cli("sessions", env={"JUPYTER_DATA_DIR": str(tmp_path / "empty")})
    refused(nowhere, "no session store at", str(tmp_path / "empty"))
    # A server on Redis writes no file: its default path would be an empty answer.
    (config_dir / "jupyter_server_config.py").write_text(
        'c.ChatBridgeApp.store_url = "redis://127.0.0.1:6379/0"\n'
    )
    on_redis = cli("sessions", env={"JUPYTER_CONFIG_DIR": str(config_dir)}, cwd=recorded.root)
    refused(on_redis, "store_url redis://127.0.0.1:6379/0", "--store-path")
    named = cli("sessions", f"--store-path={store}", env={"JUPYTER_CONFIG_DIR": str(config_dir)})
    assert named.returncode == 0 and "demo" in named.stdout, named.stderr


# -- bad input changes nothing --------------------------------------------------------------


def test_an_unknown_session_is_refused_and_changes_nothing(
    recorded: Recorded, tmp_path: Path
) -> None:
    store = copy_store(recorded, tmp_path)
    before = digest(tmp_path)
    for command in ("show", "export", "delete"):
        refused(cli(command, "nosuch", f"--store-path={store}"), "no session 'nosuch'", str(store))
    refused(cli("show", f"--store-path={store}"), "exactly one session id")
    refused(cli("export", "demo", "--format=pdf", f"--store-path={store}"), "'format'", "ipynb")
    nowhere = tmp_path / "no" / "demo.md"
    refused(cli("export", "demo", "-o", str(nowhere), f"--store-path={store}"), "cannot write")
    assert digest(tmp_path) == before


def test_a_missing_file_is_refused_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite3"
    for args in (["sessions"], ["show", "demo"], ["delete", "demo"], ["check"]):
        refused(cli(*args, f"--store-path={missing}"), "no session store at", str(missing))
    assert list(tmp_path.iterdir()) == []


def test_check_passes_on_a_sound_store(recorded: Recorded, tmp_path: Path) -> None:
    store = copy_store(recorded, tmp_path)
    result = cli("check", f"--store-path={store}")
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[0].endswith(
        f"3 sessions, {sum(map(len, recorded.histories.values()))} events, 3 receipts, schema 1"
    )
    assert "FAIL" not in result.stdout
    assert result.stdout.endswith("the store is sound\n")


def test_a_damaged_page_is_reported_and_nothing_is_written(
    recorded: Recorded, tmp_path: Path
) -> None:
    store = copy_store(recorded, tmp_path)
    with sqlite3.connect(store) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()[
            0
        ]
    with store.open("r+b") as file:  # scribble over the events table's b-tree page
        file.seek((root - 1) * page_size)
        file.write(b"\xa5" * 200)
    before = digest(tmp_path)
    check = cli("check", f"--store-path={store}")
    assert check.returncode == 1
    assert "FAIL  SQLite integrity" in check.stdout or "FAIL  every row" in check.stdout
    assert check.stdout.endswith("check(s) failed\n")
    refused(cli("show", "demo", f"--store-path={store}"), "damaged", "jupyter chatbridge check")
    refused(cli("delete", "demo", f"--store-path={store}"), "damaged")
    assert digest(tmp_path) == before


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "sessions.sqlite3"
    store.write_bytes(b"this is not SQLite" * 100)
    check = cli("check", f"--store-path={store}")
    assert check.returncode == 1
    assert "FAIL  SQLite integrity" in check.stdout
    assert "not a database" in check.stdout
    refused(cli("sessions", f"--store-path={store}"), "damaged or is not a session store")
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    refused(cli("sessions", f"--store-path={other}"), "is not a session store", "'meta'")


def test_check_finds_holes_in_seqs_and_receipts_without_their_message(
    recorded: Recorded, tmp_path: Path
) -> None:
    store = copy_store(recorded, tmp_path)
    with sqlite3.connect(store) as conn:
        conn.execute("DELETE FROM events WHERE session_id = 'demo' AND seq = 3")
        conn.execute("INSERT INTO receipts VALUES ('demo', 'ghost', 99)")
        conn.execute("UPDATE receipts SET seq = 2 WHERE session_id = 'broken'")
        conn.execute("INSERT INTO events VALUES ('gone', 1, 'session_ended', '{}')")
    conn.close()
    result = cli("check", f"--store-path={store}")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "ok    SQLite integrity (PRAGMA integrity_check)" in lines
    assert "FAIL  event seqs contiguous in every session" in lines
    assert "        session 'demo': seq 2 is followed by 4 (1 missing)" in lines
    assert "FAIL  receipts point at their user messages" in lines
    last = recorded.histories["demo"][-1]["seq"]
    assert (
        f"        session 'demo': receipt 'ghost' points at seq 99, past the last event ({last})"
    ) in lines
    assert (
        "        session 'broken': receipt 'm1' points at seq 2, which is not that user message"
    ) in lines
    assert "        events of unknown session 'gone'" in lines
    assert lines[-1] == "3 check(s) failed"


# -- while a server runs ------------------------------------------------------------------


def test_reads_work_while_a_server_runs_and_delete_waits_until_it_stopped(
    tmp_path: Path,
) -> None:
    root = tmp_path / "live"
    server = make_server(root, delay=0.3)
    # The command finds the store as the server did: same folder, same data dir.
    env = {"JUPYTER_DATA_DIR": str(root / "data")}

    def live_row() -> list[str]:
        # --store-path: no jupyter_server to import, so a poll is quick next to an answer.
        result = cli("sessions", f"--store-path={default_store(root)}")
        assert result.returncode == 0, result.stderr
        rows = [row.split() for row in result.stdout.splitlines()]
        return next((row for row in rows if row[0] == "live"), [])

    try:
        run_async(server.start)
        assert rest(server, "POST", "sessions", {"sessionId": "kept"})[0] == 201
        exchange(server, "kept", "hi")
        kept = history(server, "kept")
        assert rest(server, "POST", "sessions", {"sessionId": "live"})[0] == 201
        words = " ".join(f"w{i}" for i in range(20))  # 6 s of answer at 0.3 s a word
        send = {"sessionId": "live", "clientMsgId": "l1", "text": words}
        assert rest(server, "POST", "send", send)[0] == 202
        wait_until(lambda: live_row()[-1:] == ["yes"], "the open answer to reach the store")
        answered(server, "live", 1)
        wait_until(lambda: live_row()[-1:] == ["no"], "the answer's end to reach the store")
        show = cli("show", "live", env=env, cwd=root)
        assert show.returncode == 0, show.stderr
        assert f"  Slow: {words}" in show.stdout
        live = history(server, "live")
        assert live_row()[1:4] == [str(len(live)), f"#{live[-1]['seq']}", "message_end"]

        store = default_store(root)
        before = store.read_bytes()
        line = refused(cli("delete", "live", env=env, cwd=root), "refused", "running server")
        assert server.process is not None
        assert f"pid {server.process.pid}" in line
        assert "DELETE chatbridge/api/sessions/live" in line
        link = tmp_path / "link.sqlite3"  # the lock is the file's, whatever path names it
        link.symlink_to(store)
        refused(cli("delete", "live", f"--store-path={link}"), "refused", "running server")
        assert rest(server, "GET", "sessions/live")[0] == 200
        assert store.read_bytes() == before
    finally:
        server.stop()

    deleted = cli("delete", "live", env=env, cwd=root)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == f"deleted session live ({len(live)} events) from {store}\n"
    listed = cli("sessions", env=env, cwd=root)
    assert [row.split()[0] for row in listed.stdout.splitlines()[1:]] == ["kept"]
    assert cli("check", env=env, cwd=root).returncode == 0
    refused(cli("show", "live", env=env, cwd=root), "no session 'live'")

    again = make_server(root)
    try:  # the next server agrees: that session is gone, the other one is intact
        run_async(again.start)
        assert rest(again, "GET", "sessions/live")[0] == 404
        assert history(again, "kept") == kept
    finally:
        again.stop()


def test_a_store_left_by_a_crashed_server_reads_in_full(tmp_path: Path) -> None:
    # SIGKILL: the server never checkpoints, so committed events live only in the -wal file.
    root = tmp_path / "crashed"
    server = make_server(root)
    try:
        run_async(server.start)
        assert rest(server, "POST", "sessions", {"sessionId": "demo"})[0] == 201
        exchange(server, "demo", "still here")
        events = history(server, "demo")
        store = default_store(root)

        def stored() -> list[Any]:
            result = cli("export", "demo", "--format=jsonl", f"--store-path={store}")
            return [json.loads(line) for line in result.stdout.splitlines()]

        wait_until(lambda: stored() == events, "the answer to be committed")
    finally:
        server.kill()
    wal = store.with_name(store.name + "-wal")
    assert wal.stat().st_size > 0
    assert stored() == events
    assert cli("check", f"--store-path={store}").returncode == 0


# -- the command itself ---------------------------------------------------------------------


def test_help_everywhere() -> None:
    top = cli("--help")
    assert top.returncode == 0
    for name in ("sessions", "show", "export", "delete", "check"):
        assert name in top.stdout
        sub = cli(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "--store-path" in sub.stdout
    assert "--format" in cli("export", "--help").stdout
    refused(cli(), "give a subcommand")
    refused(cli("bogus"), "unknown subcommand 'bogus'")


def test_the_console_script_is_jupyters_usual_entry_point() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    entry = EntryPoint("jupyter-chatbridge", scripts["jupyter-chatbridge"], "console_scripts")
    from jupyter_chatbridge.server.cli import main

    assert entry.load() is main


def test_the_reader_knows_the_stores_schema_version() -> None:
    # A schema change in the server's store must come with a reader that knows it.
    assert storefile.SCHEMA_VERSION == SCHEMA_VERSION


def test_exports_say_when_history_was_trimmed_and_the_session_ended() -> None:
    events = [  # the answer's start and its user message were trimmed away
        {"type": "block_delta", "sessionId": "s", "seq": 7, "messageId": "m1", "text": "tail"},
        {"type": "message_end", "sessionId": "s", "seq": 8, "messageId": "m1"},
        {"type": "session_ended", "sessionId": "s", "seq": 9},
    ]
    assert render("markdown", "s", events) == (
        "# Chat session `s`\n\n"
        "*Events before seq 7 were trimmed from history.*\n\n"
        "**Agent**\n\ntail\n\n"
        "*The session ended.*\n"
    )
    notebook = nbformat.reads(render("ipynb", "s", events), as_version=4)
    nbformat.validate(notebook)
    assert len({cell.id for cell in notebook.cells}) == len(notebook.cells) == 4


def test_an_open_answer_is_running_in_every_export() -> None:
    events = [
        {"type": "user_message", "sessionId": "s", "seq": 1, "clientMsgId": "a", "text": "hi"},
        {"type": "message_start", "sessionId": "s", "seq": 2, "messageId": "m1", "replyTo": 1},
        {"type": "block_delta", "sessionId": "s", "seq": 3, "messageId": "m1", "text": "Hel"},
    ]
    chat = conversation("s", events)
    assert [(m.role, m.text) for m in chat.messages] == [("user", "hi"), ("agent", "Hel")]
    assert ending(chat.messages[1]) == "running"
    assert "*The answer was still running when this was exported.*" in render(
        "markdown", "s", events
    )


def test_the_python_clients_export_is_the_commands_byte_for_byte(tmp_path: Path) -> None:
    from jupyter_chatbridge.client import AsyncChatClient, ChatClient

    root = tmp_path / "live"
    server = make_server(root)
    try:
        run_async(server.start)
        with ChatClient(server.url, server.token) as client:
            session = client.session("kept")
            session.ask("hello there")
            session.ask("what is *markdown*?\n- a list")
            store = default_store(root)
            for fmt in ("markdown", "jsonl", "ipynb"):
                out = tmp_path / f"kept.{fmt}"
                result = cli(
                    "export", "kept", f"--format={fmt}", "-o", str(out), f"--store-path={store}"
                )
                assert result.returncode == 0, result.stderr
                assert session.export(fmt).encode("utf-8") == out.read_bytes(), fmt

            async def exported() -> str:
                async with AsyncChatClient(server.url, server.token) as aio:
                    return await aio.handle("kept").export("ipynb")

            assert run_async(exported).encode("utf-8") == (tmp_path / "kept.ipynb").read_bytes()
            nbformat.validate(nbformat.reads(session.export("ipynb"), as_version=4))
            with pytest.raises(ValueError, match="unknown export format"):
                session.export("pdf")
    finally:
        server.stop()
