"""Render benchmark JSON files as Markdown tables (so numbers in the docs are never typed).

    python benchmarks/report.py --header docs/benchmarks_header.md benchmarks/results/*.json \
        > docs/benchmarks.md

Each file is one benchmark run in the common layout {"benchmark", "config", "rows"}; the table
has one row per system and one column per metric, in first-seen order.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    a = abs(value)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4g}" if a < 10 else f"{value:.1f}"


def render(doc: dict, source: str) -> str:
    rows = doc["rows"]
    systems: list[str] = []
    metrics: list[tuple[str, str, str]] = []
    cells: dict[tuple[str, str], str] = {}
    for r in rows:
        system = r["system"]
        key = r["metric"]
        if system not in systems:
            systems.append(system)
        m = (key, r.get("unit", ""), r.get("better", ""))
        if m not in metrics:
            metrics.append(m)
        text = fmt(r["value"])
        if r.get("std") is not None:
            text += f" ± {fmt(r['std'])}"
        elif r.get("stderr") is not None:
            text += f" ± {fmt(r['stderr'])} s.e."
        cells[(system, key)] = text
    head = ["system"] + [
        f"{k}" + (f" ({u})" if u and u not in ("x", "") else (" (×)" if u == "x" else ""))
        + (" ↑" if b == "higher" else " ↓" if b == "lower" else "")
        for k, u, b in metrics
    ]
    lines = [f"### {doc['benchmark']}", "", f"Source: `{source}`", ""]
    if len(metrics) > 6 and len(metrics) > len(systems):
        # many metrics, few systems: one row per metric reads better
        lines.append("| metric | " + " | ".join(systems) + " |")
        lines.append("|" + "---|" * (len(systems) + 1))
        for (k, _, _), label in zip(metrics, head[1:], strict=True):
            lines.append("| " + " | ".join([label] + [cells.get((s, k), "—") for s in systems])
                         + " |")
    else:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for s in systems:
            lines.append("| " + " | ".join([s] + [cells.get((s, k), "—") for k, _, _ in metrics])
                         + " |")
    config = doc.get("config", {})
    if config:
        shown = ", ".join(f"{k}={v}" for k, v in config.items() if not isinstance(v, (dict, list)))
        lines += ["", f"<sub>config: {shown}</sub>"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--header", type=Path, default=None, help="Markdown to print first")
    args = ap.parse_args(argv)
    out = [args.header.read_text()] if args.header else []
    for f in args.files:
        out.append(render(json.loads(f.read_text()), str(f)))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
