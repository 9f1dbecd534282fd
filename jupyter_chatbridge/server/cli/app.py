"""`jupyter chatbridge`: look at, export and delete stored sessions, and check the store.

Each subcommand is a `JupyterApp`, so it reads the usual Jupyter config files
(`jupyter_server_config.py`, the extension's own) and finds the store exactly where
the server would: `c.ChatBridgeApp.store_path`, or that trait's default. Reads are
read-only SQLite and safe while a server runs; `delete` writes through the server's
own store code, and only when no running server holds the store's lock.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from jupyter_core.application import JupyterApp, base_aliases, base_flags
from traitlets import Enum, TraitError, Unicode, default
from traitlets.config import Application, Config

from ...protocol.export import FORMATS, conversation, render, to_text
from ..store import MEMORY, StoreError, StoreLocked, open_store
from .check import check_store
from .storefile import StoreFile, StoreFileError, lock_holder

if TYPE_CHECKING:
    from ..app import ChatBridgeApp


def server_extension(config: Config | None = None) -> ChatBridgeApp:
    """The extension app as the server would configure it: the one source of its defaults.

    It is given a (never started) `ServerApp` of the same config, because a default
    may depend on the server (its root folder). Imported here, not at the top:
    jupyter_server takes seconds to import, and a command given --store-path never
    needs it.
    """
    from jupyter_server.serverapp import ServerApp

    from ..app import ChatBridgeApp

    return ChatBridgeApp(config=config, serverapp=ServerApp(config=config))


class CommandError(Exception):
    """A refusal the user can act on: printed as one line on stderr, exit status 1."""


class StoreCommand(JupyterApp):
    """Common to every subcommand: which store file, found as the server finds it."""

    name = "jupyter-chatbridge"
    store_path = Unicode(
        "",
        config=True,
        help="The session store file. Default: the server's c.ChatBridgeApp.store_path "
        "from the Jupyter config files, else its default.",
    )
    root_dir = Unicode(
        "",
        config=True,
        help="The folder the server runs in (c.ServerApp.root_dir; default: the current "
        "folder), for a default store path that depends on it.",
    )
    aliases: ClassVar[dict[str, Any]] = {  # type: ignore[misc]
        **base_aliases,
        "store-path": "StoreCommand.store_path",
        "root-dir": "StoreCommand.root_dir",
    }
    flags: ClassVar[dict[str, Any]] = dict(base_flags)  # type: ignore[misc]

    @default("config_file_name")
    def _default_config_file_name(self) -> str:
        return "jupyter_server_config"  # where `c.ChatBridgeApp.*` usually lives

    def load_config_file(self, suppress_errors: bool = True) -> None:  # type: ignore[override]
        """The server's config files, then the extension's own, as the server reads them."""
        super().load_config_file(suppress_errors)
        if not self.config_file and not self.store_path:
            Application.load_config_file(
                self, server_extension().config_file_name, path=self.config_file_paths
            )

    def store(self) -> StoreFile:
        """The store file to work on."""
        path = self.store_path
        if not path:
            config = Config()
            config.merge(self.config)
            if self.root_dir:
                if not Path(self.root_dir).expanduser().is_dir():
                    raise CommandError(f"no folder {self.root_dir} (--root-dir)")
                config.ServerApp.root_dir = self.root_dir
            try:
                extension = server_extension(config)
                path, url = extension.store_path, extension.store_url
            except TraitError as exc:  # e.g. a root folder that does not exist
                raise CommandError(str(exc)) from exc
            if url:
                # Else these commands would read the SQLite default, which that server
                # never writes: an empty or stale list, and no hint why.
                raise CommandError(
                    f"the server is configured with store_url {url}: its sessions are in "
                    "Redis, not in a file, and these commands read SQLite stores (give "
                    "--store-path to name one)"
                )
        if path == MEMORY:
            raise CommandError(
                f'the server is configured with store_path "{MEMORY}": its sessions are not '
                "kept in any file (give --store-path)"
            )
        return StoreFile(Path(path).expanduser())

    def session_id(self) -> str:
        """The one positional argument: a session id."""
        if len(self.extra_args) != 1:
            raise CommandError(
                f"give exactly one session id (see `jupyter chatbridge "
                f"{self.subcommand_name} --help`)"
            )
        return str(self.extra_args[0])

    subcommand_name = ""

    def start(self) -> None:
        """Run the subcommand; a refusal is one line on stderr and exit status 1."""
        try:
            self.run()
        except (CommandError, StoreFileError, StoreError) as exc:
            print(f"jupyter chatbridge {self.subcommand_name}: {exc}", file=sys.stderr)
            self.exit(1)

    def run(self) -> None:
        """The subcommand's work."""
        raise NotImplementedError


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class SessionsCommand(StoreCommand):
    """List the stored sessions."""

    description = (
        "List the sessions in the store: id, events retained, last activity (the newest "
        "event's seq and type; events carry no time), created, and running (an answer "
        "is open in the log)."
    )
    subcommand_name = "sessions"
    examples = "jupyter chatbridge sessions\njupyter chatbridge sessions --store-path=./s.sqlite3"

    def run(self) -> None:
        """Print the table."""
        rows = [("ID", "EVENTS", "LAST ACTIVITY", "CREATED", "RUNNING")]
        for s in self.store().sessions():
            last = f"#{s.last_seq} {s.last_type}" if s.last_seq else "-"
            running = "yes" if s.running else "no"
            rows.append((s.id, str(s.events), last, _when(s.created), running))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )


class ShowCommand(StoreCommand):
    """Print one conversation."""

    description = (
        "Print a session's conversation as readable text: who said what, and how each answer ended."
    )
    subcommand_name = "show"
    examples = "jupyter chatbridge show demo"

    def run(self) -> None:
        """Print the conversation."""
        session_id = self.session_id()
        events = self.store().events(session_id)
        sys.stdout.write(to_text(conversation(session_id, events)))


class ExportCommand(StoreCommand):
    """Write one session to a file."""

    description = (
        "Export a session: jsonl (its events, one JSON object a line), markdown (the "
        "conversation) or ipynb (a notebook whose markdown cells are the conversation). "
        "Written to stdout, or to the file given with -o."
    )
    subcommand_name = "export"
    examples = (
        "jupyter chatbridge export demo --format=ipynb -o demo.ipynb\n"
        "jupyter chatbridge export demo --format=jsonl > demo.jsonl"
    )
    format = Enum(FORMATS, default_value="markdown", config=True, help="What to write.")
    output = Unicode("", config=True, help="The file to write (default: stdout).")
    aliases: ClassVar[dict[str, Any]] = {  # type: ignore[misc]
        **StoreCommand.aliases,
        "format": "ExportCommand.format",
        "o": "ExportCommand.output",
        "output": "ExportCommand.output",
    }

    def run(self) -> None:
        """Render the session and write it."""
        session_id = self.session_id()
        text = render(self.format, session_id, self.store().events(session_id))
        if not self.output or self.output == "-":
            sys.stdout.write(text)
            return
        target = Path(self.output).expanduser()
        if target.is_dir():
            raise CommandError(f"{target} is a directory")
        # Write beside the target and rename: a failed export never leaves half a file.
        try:
            fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        except OSError as exc:
            raise CommandError(f"cannot write {target}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
            os.chmod(partial, 0o644)
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        print(f"wrote {target} ({self.format}, session {session_id})", file=sys.stderr)


class DeleteCommand(StoreCommand):
    """Delete one session from a store no server is using."""

    description = (
        "Delete a session and all its events and receipts. Refused while a running server "
        "holds the store (delete through its API then: DELETE chatbridge/api/sessions/ID)."
    )
    subcommand_name = "delete"
    examples = "jupyter chatbridge delete demo"

    def run(self) -> None:
        """Check, then delete through the server's own store code."""
        session_id = self.session_id()
        store = self.store()
        count = len(store.events(session_id))  # unknown session or damaged file: refused
        holder = lock_holder(store.path)
        if holder is not None:
            raise _in_use(store.path, holder, session_id)
        if sys.stdin.isatty() and not self.answer_yes:
            reply = input(f"Delete session {session_id!r} ({count} events)? [y/N] ")
            if not reply.lower().startswith("y"):
                raise CommandError("not deleted")
        # The server's store takes the lock itself: a server starting meanwhile is refused.
        try:
            writer = open_store(store.path)
        except StoreLocked as exc:  # a server started since the probe
            raise _in_use(store.path, exc.pid, session_id) from exc
        try:
            writer.delete_session(session_id)
            asyncio.run(writer.flush())
        finally:
            writer.close()
        print(f"deleted session {session_id} ({count} events) from {store.path}")


def _in_use(path: Path, pid: str, session_id: str) -> CommandError:
    return CommandError(
        f"refused: {path} is in use by a running server (pid {pid}); stop it first, "
        f"or delete through its API (DELETE chatbridge/api/sessions/{session_id})"
    )


class CheckCommand(StoreCommand):
    """Check a store file's integrity."""

    description = (
        "Check the store: SQLite's integrity_check, the schema and its version, contiguous "
        "event seqs in every session, event rows that match their JSON, and receipts that "
        "point at their user messages. Exit status 0 when sound, 1 when not."
    )
    subcommand_name = "check"
    examples = "jupyter chatbridge check"

    def run(self) -> None:
        """Print the report; a failed check is exit status 1."""
        report = check_store(self.store())
        sys.stdout.write(report.text())
        if not report.ok:
            self.exit(1)


class ChatBridgeCommand(JupyterApp):
    """`jupyter chatbridge`: operate the session store of jupyter_chatbridge."""

    name = "jupyter-chatbridge"
    description = (
        "Inspect, export, delete and check the sessions a jupyter_chatbridge server keeps "
        "in its store file. Reads are safe while the server runs."
    )
    examples = (
        "jupyter chatbridge sessions\n"
        "jupyter chatbridge show demo\n"
        "jupyter chatbridge export demo --format=ipynb -o demo.ipynb\n"
        "jupyter chatbridge check"
    )
    subcommands: ClassVar[dict[str, tuple[type[StoreCommand], str]]] = {  # type: ignore[misc]
        "sessions": (SessionsCommand, "List the stored sessions."),
        "show": (ShowCommand, "Print a session's conversation."),
        "export": (ExportCommand, "Export a session as jsonl, markdown or ipynb."),
        "delete": (DeleteCommand, "Delete a session (not while a server holds the store)."),
        "check": (CheckCommand, "Check the store's integrity."),
    }

    def start(self) -> None:
        """Run the subcommand; without one, say which there are."""
        if self.subapp is None:
            names = ", ".join(self.subcommands)
            what = "give a subcommand"
            if self.extra_args:
                what = f"unknown subcommand {self.extra_args[0]!r}"
            print(f"jupyter chatbridge: {what}: {names} (see --help)", file=sys.stderr)
            self.exit(1)
        super().start()


main = ChatBridgeCommand.launch_instance
