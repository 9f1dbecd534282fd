"""Scenario 6, give-up time: how soon each client stops on a session that no longer
exists (a browser-style client sees close code 4404, a script HTTP 404)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .client import HTTPStatusError, WSReader
from .common import DASH, percentile
from .harness import (
    Config,
    guarded,
    log,
)
from .report import Row
from .servers import ServerPool
from .systems import Ours


def blind_retry_seconds() -> tuple[float, str]:
    """The old policy's wait before it gives up: the sum of its nominal backoff delays.

    Taken from the project's own `ReconnectPolicy` when it is importable, otherwise
    computed from the contract (6 attempts, base 1 s, cap 30 s): Σ min(30, 2^k), k = 0..5.
    """
    try:
        from jupyter_chatbridge.client import ReconnectPolicy

        return ReconnectPolicy().blind_retry_budget(), "ReconnectPolicy().blind_retry_budget()"
    except (ImportError, AttributeError):
        return sum(min(30.0, 1.0 * 2**k) for k in range(6)), "Σ min(30, 2^k) s, k = 0..5"


def _ws_path(system: Ours, session: str) -> str:
    return f"{system.server.base}chatbridge/api/sessions/{session}/ws"


async def _wire_outcome(system: Ours, session: str, origin: bool) -> tuple[str, int]:
    """Raw socket: ('close', code) after an upgrade, or ('http', status) without one."""
    port = system.port
    ws = await WSReader.connect(
        port,
        _ws_path(system, session),
        lambda *a: None,
        origin=f"http://127.0.0.1:{port}" if origin else None,
        extra_headers=system.server.auth_headers(),
        timeout=10,
    )
    try:
        try:
            await asyncio.wait_for(ws.opened, 10)
        except HTTPStatusError as exc:
            return "http", exc.status
        code, _ = await asyncio.wait_for(ws.close_frame, 10)
        return "close", code
    finally:
        ws.close()


def _project_client() -> Any:
    """The project's Python client module, or None where it is not there (yet)."""
    try:
        from jupyter_chatbridge import client

        client.SessionSocket  # noqa: B018
        client.HttpTransport  # noqa: B018
        return client
    except (ImportError, AttributeError):
        return None


async def _client_gives_up(system: Ours, session: str, origin: bool) -> bool:
    """The project's SessionSocket pointed at `session`; True if it reported session-unknown."""
    client = _project_client()
    port = system.port
    transport = client.HttpTransport(
        f"http://127.0.0.1:{port}{system.server.base}",
        token=system.server.auth_headers()["Authorization"].split()[1],
    )
    sock = client.SessionSocket(
        transport, session, origin=f"http://127.0.0.1:{port}" if origin else None
    )
    try:
        await asyncio.wait_for(sock.wait_closed(), 10)
        return bool(sock.session_unknown) and sock.attempts_made == 1
    finally:
        await sock.close()


async def _ws_endpoint_present(system: Ours) -> bool:
    room = await system.new_room()
    try:
        ws = await WSReader.connect(
            system.port,
            _ws_path(system, room),
            lambda *a: None,
            extra_headers=system.server.auth_headers(),
            timeout=10,
        )
        try:
            await asyncio.wait_for(ws.opened, 10)
            return True
        except HTTPStatusError:
            return False
        finally:
            ws.close()
    finally:
        await system.delete_room(room)


async def give_up(cfg: Config, pool: ServerPool) -> list[Row]:
    blind, how = blind_retry_seconds()
    paths = ((True, "browser-style (Origin → 4404)"), (False, "script (no Origin → 404)"))
    client_rows = {
        origin: (
            Row("6 give-up", f"p50 client, {label}", "ms", "lower"),
            Row("6 give-up", f"p99 client, {label}", "ms", "lower", absolute_max=100),
        )
        for origin, label in paths
    }
    wire_rows = {
        origin: Row("6 give-up", f"p99 wire only, {label}", "ms", "lower")
        for origin, label in paths
    }
    blind_row = Row(
        "6 give-up",
        "blind retry of the 6-attempt policy (computed, not waited)",
        "ms",
        "lower",
        ours=[blind * 1000],
        note=f"{how} = {blind:g} s nominal; with its jitter 50{DASH}100% of that.",
    )

    def all_rows() -> list[Row]:
        out: list[Row] = []
        for origin, _ in paths:
            out += [*client_rows[origin], wire_rows[origin]]
        return [*out, blind_row]

    server = await pool.get("ours")
    system = Ours(server)
    have_client = _project_client() is not None
    try:
        if not await _ws_endpoint_present(system):
            for row in all_rows()[:-1]:
                row.status = "pending (no WebSocket endpoint yet)"
            log("give-up: pending (no WebSocket endpoint yet)")
            return all_rows()
        if not have_client:
            for p50, p99 in client_rows.values():
                p50.status = p99.status = "pending (no Python client yet)"
        for rep in range(cfg.reps):
            for origin, label in paths:
                expected = ("close", 4404) if origin else ("http", 404)

                async def one(origin: bool = origin, expected: Any = expected) -> Any:
                    room = await system.new_room()
                    await system.delete_room(room)  # the client is pointed at a deleted session
                    wire, full = [], []
                    for _ in range(cfg.giveup_trials):
                        t0 = time.monotonic_ns()
                        outcome = await _wire_outcome(system, room, origin)
                        wire.append((time.monotonic_ns() - t0) / 1e6)
                        if outcome != expected:
                            raise RuntimeError(f"got {outcome}, contract says {expected}")
                        if have_client:
                            t0 = time.monotonic_ns()
                            ok = await _client_gives_up(system, room, origin)
                            full.append((time.monotonic_ns() - t0) / 1e6)
                            if not ok:
                                raise RuntimeError("the client did not give up at once")
                    return wire, full

                wire, full = await guarded(wire_rows[origin], "ours", one()) or ([], [])
                wire_rows[origin].ours.append(percentile(sorted(wire), 99))
                p50, p99 = client_rows[origin]
                p50.ours.append(percentile(sorted(full), 50))
                p99.ours.append(percentile(sorted(full), 99))
                log(
                    f"give-up rep {rep + 1} {label}: client p50 {p50.ours[-1]:.2f} ms "
                    f"p99 {p99.ours[-1]:.2f} ms, wire p99 {wire_rows[origin].ours[-1]:.2f} ms"
                )
    finally:
        system.close()
    return all_rows()
