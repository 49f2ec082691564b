"""`make bench`: run every benchmark, each in its own process, and write results/latest.md.

    python benchmarks/run_all.py [--only collate,cache]

Each benchmark prints its figures and ends with a SUMMARY line; this script collects their JSON
(``results/<bench>.json``) into one markdown table with the machine it ran on and the total time. A missed
target is a finding, not a failure: the exit code is non-zero only when a benchmark crashed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
BENCHMARKS = (  # name, script, arguments; the order keeps the cheap ones first
    ("collate", "bench_collate.py", ()),
    ("cache", "bench_cache.py", ()),
    ("train", "bench_train.py", ()),
    ("scaling", "bench_scaling.py", ()),
    ("attribution", "bench_attribution.py", ()),
    ("packing", "bench_packing.py", ("--rows", "48", "--batch", "4")),
    ("stream", "bench_stream.py", ()),
    ("tiles", "bench_tiles.py", ()),
)
BUDGET_S = 600


def run(script: str, args: tuple[str, ...]) -> tuple[int, str, float]:
    """Run one benchmark, echoing its output; (exit code, last SUMMARY line, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(BENCH_DIR / script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    summary = ""
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        tail = [*tail[-30:], line.rstrip()]
        if line.startswith("SUMMARY "):
            summary = line.strip()
    code = proc.wait()
    if code and not summary:
        summary = "FAILED: " + " | ".join(t for t in tail[-3:] if t)
    return code, summary, time.perf_counter() - start


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value).replace("|", "\\|")


def figures_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| benchmark | figure | vlmtrain | baseline (same run) | ratio | target | status |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for res in results:
        for fig in res["figures"]:
            unit = f" {fig['unit']}" if fig["unit"] else ""
            status = "" if fig["met"] is None else ("met" if fig["met"] else "**missed**")
            value = _cell(fig["value"]) + unit
            base = _cell(fig["baseline"]) + unit if fig["baseline"] is not None else ""
            ratio = f"{fig['ratio']:.2f}x" if fig["ratio"] is not None else ""
            lines.append(f"| {res['bench']} | {_cell(fig['name'])} | {value} | {base} | {ratio} | "
                         f"{_cell(fig['target'])} | {status} |")
    return lines


def markdown(results: list[dict[str, Any]], runs: list[tuple[str, int, str, float]], total: float,
             others: list[dict[str, Any]]) -> str:
    machine = results[0]["machine"] if results else {}
    head = [f"# vlmtrain benchmarks — {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
            f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; Python "
            f"{machine.get('python', '?')}, torch {machine.get('torch', '?')}, transformers "
            f"{machine.get('transformers', '?')}, trl {machine.get('trl', '?')}, datasets "
            f"{machine.get('datasets', '?')}.",
            f"Total time: {total:.0f} s (budget {BUDGET_S} s{'' if total <= BUDGET_S else ': OVER'}). "
            "Every ratio is against a baseline measured in the same run; medians of repeats.", "",
            "| benchmark | summary | seconds |", "| --- | --- | --- |"]
    head += [f"| {name} | {_cell(summary.split(': ', 1)[-1])} | {seconds:.0f} |"
             for name, _, summary, seconds in runs]
    body = ["", "## Figures", "", *figures_table(results), "", "## Notes (profiles, breakdowns)", ""]
    for res in results:
        body += [f"### {res['bench']}: {res['title']}", "", "```", *res["notes"], "```", ""]
    if others:
        body += ["## Other results in benchmarks/results/ (earlier runs, not part of this one)", ""]
        for res in others:
            stamp = res.get("_mtime", "")
            body += [f"### {res['bench']} ({stamp}; {res['machine'].get('cpu', '?')}): {res['title']}", "",
                     *figures_table([res]), "", "```", *res["notes"], "```", ""]
    return "\n".join(head + body) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    args = parser.parse_args()
    chosen = [b for b in BENCHMARKS if not args.only or b[0] in args.only.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs: list[tuple[str, int, str, float]] = []
    for name, script, extra in chosen:
        (RESULTS / f"{name}.json").unlink(missing_ok=True)
        print(f"=== {name} ({script}) ===", flush=True)
        code, summary, seconds = run(script, extra)
        runs.append((name, code, summary, seconds))
    total = time.perf_counter() - start
    results = [json.loads((RESULTS / f"{n}.json").read_text()) for n, _, _, _ in runs
               if (RESULTS / f"{n}.json").exists()]
    names = {name for name, _, _ in BENCHMARKS}
    others = []
    for path in sorted(RESULTS.glob("*.json")):
        if path.stem not in names:
            res = json.loads(path.read_text())
            res["_mtime"] = dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
            others.append(res)
    out = RESULTS / "latest.md"
    out.write_text(markdown(results, runs, total, others))
    print("\n=== summary ===")
    for name, code, summary, seconds in runs:
        print(f"{name:8} {seconds:5.0f} s  {summary if code == 0 else f'exit {code}: {summary}'}")
    print(f"total {total:.0f} s (budget {BUDGET_S} s); table: {out}")
    sys.exit(1 if any(code for _, code, _, _ in runs) else 0)


if __name__ == "__main__":
    main()
