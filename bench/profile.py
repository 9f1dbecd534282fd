"""Profile one server under a fan-out run with py-spy, and print its top frames.

    python -m bench.profile                      # ours, N=1000 x 200 events
    python -m bench.profile --system floor --n 100 --events 2000
    python -m bench.profile --native             # include C frames (gc_collect_main, send…)

py-spy (``pip install py-spy``) samples the server process from outside, so
the server runs unmodified. The reader is this process, as in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from .harness import EndCounter, warm_up
from .servers import ServerProcess, apply_ours_overrides, stop_all
from .systems import SYSTEMS, close_all


def summarise(raw: Path, top: int) -> str:
    """Per-thread sample shares, then the hottest frames of the main (event loop) thread,
    from py-spy's raw (collapsed) output recorded with --threads."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    per_thread: Counter[str] = Counter()
    total = 0
    main_total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        per_thread[thread] += n
        if thread != "MainThread":
            continue
        main_total += n
        own[frames[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    if not total:
        return "no samples"
    out = [
        f"{total} samples; by thread: "
        + ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in per_thread.most_common())
    ]
    if not main_total:
        return out[0]
    out += ["", f"main thread, self time ({main_total} samples):"]
    out += [f"  {100 * n / main_total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["", "main thread, inclusive time (below the event loop):"]
    skip = (
        "run_forever",
        "_run_once",
        "launch_instance",
        "<module>",
        "_run_code",
        "start_ioloop",
        "ServerApp.start",
        "run_until_complete",
        "BaseAsyncIOLoop.start",
        "Handle._run",
        "_run_module_as_main",
        "libc.so",
        "main (",
    )
    rows = [(f, n) for f, n in inclusive.most_common(top * 4) if not any(s in f for s in skip)]
    out += [f"  {100 * n / main_total:5.1f}%  {f}" for f, n in rows[:top]]
    return "\n".join(out)


async def run(args: argparse.Namespace) -> None:
    server = await ServerProcess(args.system).start()
    system = SYSTEMS[args.system](server)
    out = Path(tempfile.mkdtemp(prefix="bench-profile-")) / "profile.txt"
    try:
        await warm_up(system)
        room = await system.new_room()
        counter = EndCounter(args.n)
        watchers = await system.open_watchers(room, args.n, counter.on_frames)
        cmd = [
            args.py_spy,
            "record",
            "-p",
            str(server.proc.pid),  # type: ignore[union-attr]
            "-r",
            str(args.rate),
            "-f",
            "raw",
            "-o",
            str(out),
            "--threads",
        ]
        # --native pauses the process per sample (needed for C stacks); else don't.
        cmd.append("--native" if args.native else "--nonblocking")
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await asyncio.sleep(1.0)  # py-spy attaches
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await system.send(room, f"burst {args.events}")
            await asyncio.wait_for(counter.done, 120)
            elapsed = loop.time() - t0
        finally:
            spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
            try:
                spy.wait(20)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
        close_all(watchers)
        print(
            f"{args.system}: N={args.n} x {args.events} events, "
            f"{args.n * args.events / elapsed:,.0f} deliveries/s with py-spy attached"
        )
        if out.exists():
            print(summarise(out, args.top))
        else:
            err = spy.stderr.read().decode() if spy.stderr else ""
            print(f"py-spy wrote nothing: {err.strip()}")
    finally:
        system.close()
        server.stop()
        if args.keep:
            print("raw profile kept in", out)
        else:
            shutil.rmtree(out.parent, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--system", choices=sorted(SYSTEMS), default="ours")
    parser.add_argument("--n", type=int, default=1000, help="watchers")
    parser.add_argument("--events", type=int, default=200, help="agent events")
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--native", action="store_true", help="sample C frames too")
    parser.add_argument("--keep", action="store_true", help="keep the raw py-spy output")
    parser.add_argument(
        "--ours-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ChatBridgeApp config (e.g. store_path=:memory:); repeatable",
    )
    args = parser.parse_args()
    apply_ours_overrides(args.ours_config)
    args.py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(args.py_spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        asyncio.run(run(args))
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
