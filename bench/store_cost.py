"""`python -m bench.store_cost`: what the durable session store costs.

Kept as a short name for `python -m bench --only store --write no`: the store
scenario now lives in the suite (`bench.scenarios.store_rows`, rows "7 store
cost"): ours on its default SQLite store against the same server on
`store_path=:memory:`, fan-out deliveries/s (target ≥ 0.90 of :memory:), server
CPU per delivery and send → first `message_start`.

    python -m bench.store_cost            # the suite's FULL sizes, 3 repetitions
    python -m bench.store_cost --quick    # small sizes, 1 repetition

Other arguments are passed to `python -m bench` as they are (e.g. `--reps 5`).
"""

from __future__ import annotations

import sys

from .__main__ import main as bench_main


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return bench_main(["--only", "store", "--write", "no", *args])


if __name__ == "__main__":
    sys.exit(main())
