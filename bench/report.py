"""Rows of figures, the one table, the machine description and bench/RESULTS.md."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .common import DASH, X

NA = "—"


@dataclass
class Row:
    """One metric: per-repetition values for ours and each baseline, and its target.

    `better` is "higher" or "lower". `min_vs_floor`/`max_vs_floor` and
    `min_vs_socketio` define the target; `absolute_max` is a bound on ours alone
    (e.g. p99 < 20 ms). The `floor` list is the row's baseline column: the raw
    Tornado floor unless `baseline` names something else (the store rows hold the
    same server on `store_path=:memory:` there), and the target, the table cell and
    the miss text then say that name instead of "floor".
    """

    scenario: str
    metric: str
    unit: str
    better: str
    ours: list[float] = field(default_factory=list)
    floor: list[float] | None = None
    socketio: list[float] | None = None
    min_vs_floor: float | None = None
    max_vs_floor: float | None = None
    min_vs_socketio: float | None = None
    absolute_max: float | None = None
    baseline: str = "floor"  # what the `floor` column holds in this row
    status: str = ""  # overrides the figures, e.g. "pending (no WebSocket endpoint yet)"
    note: str = ""
    errors: list[str] = field(default_factory=list)

    # -- figures ------------------------------------------------------------------

    @staticmethod
    def median(values: list[float] | None) -> float:
        vals = [v for v in values or [] if not math.isnan(v)]
        return statistics.median(vals) if vals else math.nan

    def ratio(self, other: list[float] | None) -> float:
        if other is None:
            return math.nan
        a, b = self.median(self.ours), self.median(other)
        return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan

    @property
    def target(self) -> str:
        parts = []
        if self.min_vs_floor is not None:
            parts.append(f"≥{fmt_factor(self.min_vs_floor)}{X} {self.baseline}")
        if self.max_vs_floor is not None:
            parts.append(f"≤{fmt_factor(self.max_vs_floor)}{X} {self.baseline}")
        if self.min_vs_socketio is not None:
            parts.append(f"≥{fmt_factor(self.min_vs_socketio)}{X} sio")
        if self.absolute_max is not None:
            parts.append(f"<{self.absolute_max:g} {self.unit}")
        return ", ".join(parts) or NA

    def checks(self) -> list[tuple[str, float, str, float, bool]]:
        """(what, measured, comparison, bound, ok) for every part of the target."""
        out = []
        if self.min_vs_floor is not None:
            r = self.ratio(self.floor)
            vs = f"vs {self.baseline}"
            out.append((vs, r, "≥", self.min_vs_floor, r >= self.min_vs_floor))
        if self.max_vs_floor is not None:
            r = self.ratio(self.floor)
            vs = f"vs {self.baseline}"
            out.append((vs, r, "≤", self.max_vs_floor, r <= self.max_vs_floor))
        if self.min_vs_socketio is not None:
            r = self.ratio(self.socketio)
            out.append(("vs socketio", r, "≥", self.min_vs_socketio, r >= self.min_vs_socketio))
        if self.absolute_max is not None:
            m = self.median(self.ours)
            out.append(("absolute", m, "<", self.absolute_max, m < self.absolute_max))
        return out

    @property
    def verdict(self) -> str:
        if self.status:
            return NA
        checks = self.checks()
        if not checks:
            return NA
        if any(math.isnan(c[1]) for c in checks):
            return "error"
        return "pass" if all(c[4] for c in checks) else "MISS"

    def miss_text(self) -> str:
        """How far each missed bound is off, in words."""
        parts = []
        for what, measured, op, bound, ok in self.checks():
            if ok or math.isnan(measured):
                continue
            off = f"{(measured / bound - 1) * 100:+.0f}%"
            if what == "absolute":
                parts.append(
                    f"median {fmt_num(measured)} {self.unit}, target {op} {fmt_num(bound)} ({off})"
                )
            else:
                parts.append(
                    f"{what} {measured:.2f}{X}, target {op} {fmt_factor(bound)}{X} ({off})"
                )
        return "; ".join(parts)


def fmt_num(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    a = abs(v)
    if a >= 10000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_factor(v: float) -> str:
    """A target factor: two decimals below 1 (0.75, 0.90), as short as exact above (1.5, 3)."""
    return f"{v:.2f}" if v < 1 else f"{v:g}"


def fmt_stat(values: list[float] | None) -> str:
    if values is None:
        return NA
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "error"
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt_num(med)
    return f"{fmt_num(med)} ({fmt_num(min(vals))}{DASH}{fmt_num(max(vals))})"


def fmt_ratio(r: float) -> str:
    return NA if math.isnan(r) else f"{r:.2f}{X}"


HEADER = [
    "scenario",
    "metric",
    "ours",
    "floor",
    "socketio",
    "vs floor",
    "vs sio",
    "target",
    "result",
]


def baseline_cell(r: Row) -> str:
    """The floor column's cell; named when the row's baseline is not the floor."""
    cell = fmt_stat(r.floor)
    return cell if r.baseline == "floor" or r.floor is None else f"{r.baseline} {cell}"


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        metric = f"{r.metric} [{r.unit}]"
        if r.status:
            out.append([r.scenario, metric, r.status, NA, NA, NA, NA, r.target, NA])
            continue
        out.append(
            [
                r.scenario,
                metric,
                fmt_stat(r.ours),
                baseline_cell(r),
                fmt_stat(r.socketio),
                fmt_ratio(r.ratio(r.floor)),
                fmt_ratio(r.ratio(r.socketio)),
                r.target,
                r.verdict,
            ]
        )
    return out


def text_table(rows: list[Row]) -> str:
    body = table_rows(rows)
    widths = [max([len(h), *(len(row[i]) for row in body)]) for i, h in enumerate(HEADER)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    body = table_rows(rows)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_description() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    affinity = getattr(os, "sched_getaffinity", None)
    usable = len(affinity(0)) if affinity else os.cpu_count()
    return {
        "cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "memory": mem,
        "cpu": cpu,
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": sys.version.split()[0] + f" ({sys.executable})",
        "tornado": _version("tornado"),
        "jupyter_server": _version("jupyter_server"),
        "jupyter_chatbridge": _version("jupyter_chatbridge"),
        "python-socketio": _version("python-socketio"),
        "python-engineio": _version("python-engineio"),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


ANALYSIS_START = "<!-- analysis: kept across runs, edit by hand -->"
ANALYSIS_END = "<!-- /analysis -->"


def write_results(
    path: Path,
    rows: list[Row],
    machine: dict[str, str],
    config_text: str,
    elapsed: float,
    command: str,
    extra: Callable[[], str] | None = None,
    ours_text: str = "",
) -> None:
    """Write RESULTS.md: the table, machine, misses; keep the hand-written analysis section."""
    analysis = ""
    if path.exists():
        old = path.read_text()
        if ANALYSIS_START in old and ANALYSIS_END in old:
            analysis = old.split(ANALYSIS_START, 1)[1].split(ANALYSIS_END, 1)[0].strip("\n")
    machine = {**machine, "load average at end": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    lines = [
        "# Benchmark results",
        "",
        f"Latest full run: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, `{command}`, "
        f"{elapsed:.0f} s wall time. Generated by `python -m bench`; the analysis "
        "section at the end is hand-written and kept when the file is regenerated.",
        "",
        f"Each cell is the median of the repetitions, with min{DASH}max in brackets; runs of",
        "ours, the floor and socketio are interleaved (the order rotates per repetition).",
        "Ratios are of medians (ours / baseline). `floor` = minimal raw Tornado SSE",
        "server, `socketio` = python-socketio AsyncServer emitting to a room; a row",
        "whose baseline is something else names it in the floor column and the target.",
        "",
        *([ours_text, ""] if ours_text else []),
        markdown_table(rows),
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", "## Configuration", "", "```", config_text.strip(), "```", ""]
    misses = [r for r in rows if r.verdict in ("MISS", "error")]
    lines += ["## Misses in this run", ""]
    if not misses:
        lines.append("None: every target with a bound was met.")
    for r in misses:
        text = r.miss_text() if r.verdict == "MISS" else "no figure (see errors)"
        lines.append(f"- **{r.scenario} / {r.metric}**: {text}." + (f" {r.note}" if r.note else ""))
    notes = [r for r in rows if r.errors]
    if notes:
        lines += ["", "## Errors and warnings", ""]
        for r in notes:
            for e in r.errors:
                lines.append(f"- {r.scenario} / {r.metric}: {e}")
    if extra is not None:
        lines += ["", extra()]
    lines += ["", "## Analysis", "", ANALYSIS_START, analysis, ANALYSIS_END, ""]
    path.write_text("\n".join(lines))
