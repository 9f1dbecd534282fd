"""`python -m bench`: run the benchmark suite, print one table, write bench/RESULTS.md.

    python -m bench                 # the full suite (< 10 minutes on 2 cores)
    python -m bench --quick         # a smoke run with small sizes (< 1 minute)
    python -m bench --only fanout   # one scenario (repeatable: --only resume --only send)
    python -m bench --only store    # what the SQLite session store costs against :memory:
    python -m bench --only redis    # the Redis store against SQLite (needs redis-server)

This process is the reader: every client connection lives here, in one asyncio
loop, while each server under test runs in a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
import time
from pathlib import Path

from .harness import FULL, LOAD, QUICK, Config
from .report import Row, machine_description, text_table, write_results
from .scenarios import OPT_IN, SCENARIOS
from .servers import OURS_CONFIG, ServerPool, apply_ours_overrides, stop_all, store_text

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable); one of {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--reps", type=int, help="repetitions per figure (default 3, quick 1)")
    parser.add_argument(
        "--write",
        choices=["auto", "yes", "no"],
        default="auto",
        help="write bench/RESULTS.md (auto: only after a full run of every scenario)",
    )
    parser.add_argument(
        "--ours-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ChatBridgeApp config for every chatbridge server, for what-if runs "
        "(e.g. store_path=:memory:); repeatable",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        help="stop the suite after this many seconds (default 590 full, 120 quick)",
    )
    return parser.parse_args(argv)


async def run(cfg: Config, names: list[str], rows: list[Row]) -> None:
    pool = ServerPool()
    try:
        for name in names:
            print(f"== {name}", flush=True)
            t = time.monotonic()
            rows += await SCENARIOS[name](cfg, pool)
            print(f"   {name} took {time.monotonic() - t:.0f} s", flush=True)
    finally:
        pool.stop()


def _load_by_key() -> dict[tuple[str, str], list[tuple[float, float]]]:
    grouped: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for scenario, kind, server, reader in LOAD:
        grouped.setdefault((scenario, kind), []).append((server, reader))
    return grouped


def reader_load_line() -> str:
    if not LOAD:
        return "no CPU windows measured"
    worst = max(LOAD, key=lambda x: x[3])
    return (
        f"reader process CPU at most {worst[3]:.0%} of a core "
        f"(in {worst[0]} against {worst[1]}, whose server used {worst[2]:.0%})"
    )


def reader_load_section() -> str:
    """Markdown: server and reader CPU over each measured window (is the reader a bottleneck?)."""
    lines = [
        "## Reader load",
        "",
        "CPU used over the measured window, as a share of one core: the server process,",
        "and the reader process (all clients). A reader well below 100% while the server",
        "is near it means the figures measure the server, not the client.",
        "",
        "| window | system | server CPU (median) | reader CPU (max) |",
        "|---|---|---|---|",
    ]
    for (scenario, kind), values in _load_by_key().items():
        servers = sorted(v[0] for v in values)
        median, worst = servers[len(servers) // 2], max(v[1] for v in values)
        lines.append(f"| {scenario} | {kind} | {median:.0%} | {worst:.0%} |")
    return "\n".join(lines)


def ours_line() -> str:
    """Which server "ours" is in this run, and on which session store."""
    return (
        f"ours = jupyter_server + jupyter_chatbridge on {store_text()}; the 7 store cost "
        "rows compare the default SQLite store (ours) with the same server on "
        "store_path=:memory: (the baseline column, labelled :memory:)."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.reps:
        cfg = Config(**{**cfg.__dict__, "reps": max(1, args.reps)})
    names = args.only or [name for name in SCENARIOS if name not in OPT_IN]
    overrides = apply_ours_overrides(args.ours_config)
    limit = args.time_limit or (120.0 if args.quick else 590.0)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # SIGTERM ends the suite like Ctrl-C does: through the finally blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    machine = machine_description()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()), flush=True)
    print(ours_line(), flush=True)
    rows: list[Row] = []
    started = time.monotonic()
    stopped_early = ""
    try:
        asyncio.run(asyncio.wait_for(run(cfg, names, rows), limit))
    except (asyncio.TimeoutError, TimeoutError):
        stopped_early = f"stopped at the time limit ({limit:.0f} s); figures so far:"
    except KeyboardInterrupt:
        stopped_early = "interrupted; figures so far:"
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    print()
    if stopped_early:
        print(stopped_early)
    print(ours_line())
    print(text_table(rows))
    print(f"\nwall time {elapsed:.0f} s; {reader_load_line()}")
    if args.quick:
        print("quick run: reduced sizes and one repetition, so the verdicts are only indicative")
    full = not args.quick and not args.only and not stopped_early and not overrides
    if args.write == "yes" or (args.write == "auto" and full):
        command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
        config_text = (
            cfg.describe()
            + "\n\nchatbridge server config:\n"
            + "\n".join(f"--ChatBridgeApp.{k}={v}" for k, v in OURS_CONFIG.items())
        )
        config_text += f"\nstore: {store_text()}"
        if "store_path" not in OURS_CONFIG:
            config_text += " (no store_path given)"
        write_results(
            RESULTS,
            rows,
            machine,
            config_text,
            elapsed,
            command.strip(),
            reader_load_section,
            ours_text=ours_line(),
        )
        print(f"wrote {RESULTS}")
    misses = [r for r in rows if r.verdict in ("MISS", "error")]
    for r in misses:
        print(f"{r.verdict}: {r.scenario} / {r.metric}: {r.miss_text() or '; '.join(r.errors)}")
    # A benchmark prints figures; it never fails a build over them.
    return 0


if __name__ == "__main__":
    sys.exit(main())
