"""The course's own clock: every lab run with papermill in a profile, per notebook the total seconds and the slowest
cells (papermill records each cell's duration), plus each zoo's build time.

The zoos are built (or reused) first, each timed, so the notebook times are "with the lab's zoos built", as the
course table in ``labkit.course`` and the README state them. A zoo that already existed reports the seconds its
build recorded in its ``COMPLETE`` marker (``reused``). Run it on an idle machine: another busy process on two
cores doubles every number. ``--home`` points the zoos at a fresh folder to time their builds from scratch.

    python benchmarks/bench_course.py [--profiles smoke workshop] [--labs 00 04] [--top 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from labkit.course import LABS
from labkit.runner import cell_durations, notebooks_dir, run_notebook
from labkit.zoo import RECIPES, build


def build_zoos(profile: str, recipes: list[str]) -> dict[str, dict]:
    """Build or reuse each zoo of ``profile``: ``{recipe: {"seconds", "reused", "models"}}``."""
    out = {}
    for recipe in recipes:
        t0 = time.perf_counter()
        store = build(recipe, profile=profile)
        took = time.perf_counter() - t0
        recorded = store.summary().get("seconds")
        reused = recorded is not None and took < 0.5 * float(recorded)
        out[recipe] = {"seconds": round(float(recorded) if reused else took, 1), "reused": reused,
                       "models": len(store)}
        print(f"  zoo {recipe:16s} {out[recipe]['seconds']:7.1f} s  {len(store):5d} models"
              f"{'  (reused: the seconds its build recorded)' if reused else ''}", flush=True)
    return out


def run_labs(profile: str, labs: list[str], runs_root: Path, top: int) -> dict[str, dict]:
    """Run each lab's notebook: ``{stem: {"seconds", "ok", "error", "slowest": [[index, seconds, first line]]}}``."""
    out = {}
    for number in labs:
        lab = LABS[number]
        run = run_notebook(notebooks_dir() / f"{lab.stem}.ipynb", profile, runs_root=runs_root)
        slowest = sorted(cell_durations(run.output), key=lambda c: -c[1])[:top]
        out[lab.stem] = {"seconds": round(run.seconds, 1), "ok": run.ok, "error": run.error,
                         "slowest": [[i, round(s, 1), line] for i, s, line in slowest]}
        status = "ok" if run.ok else f"FAILED: {run.error}"
        print(f"  {lab.stem:24s} {run.seconds:7.1f} s ({run.seconds / 60:.1f} min)  {status}", flush=True)
        for i, s, line in slowest:
            print(f"      cell {i:3d} {s:7.1f} s  {line[:70]}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="+", default=["smoke", "workshop"], choices=["smoke", "workshop", "full"])
    ap.add_argument("--labs", nargs="+", default=list(LABS), choices=list(LABS))
    ap.add_argument("--zoos", nargs="*", default=list(RECIPES), choices=list(RECIPES),
                    help="zoos to build or reuse first (default: all)")
    ap.add_argument("--top", type=int, default=5, help="slowest cells to list per notebook")
    ap.add_argument("--home", type=Path, help="zoo folder ($LABKIT_HOME) to use, e.g. an empty one")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.home:
        os.environ["LABKIT_HOME"] = str(args.home.resolve())
    results = {"cpu_count": os.cpu_count(), "threads_env": os.environ.get("OMP_NUM_THREADS"), "profiles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for profile in args.profiles:
            print(f"profile {profile}", flush=True)
            zoos = build_zoos(profile, args.zoos)
            labs = run_labs(profile, args.labs, Path(tmp) / "runs", args.top)
            total = sum(v["seconds"] for v in labs.values())
            print(f"  all labs: {total:.0f} s ({total / 60:.1f} min); all zoos: "
                  f"{sum(v['seconds'] for v in zoos.values()) / 60:.1f} min")
            results["profiles"][profile] = {"zoos": zoos, "labs": labs}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
