"""Run a sweep's work units as local subprocesses, N at a time; finished units are skipped.

    python -m launch.local --sweep demo_seeds --parallel 2 [--root runs/sweeps] [--dry_run]
A unit is finished when its work directory holds DONE (written after a zero exit); a failed unit's
log stays in <workdir>/launch.log and the runner exits non-zero after the others finish.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from launch.sweep import SWEEPS, WorkUnit


def is_done(unit: WorkUnit) -> bool:
    return os.path.exists(os.path.join(unit.workdir, "DONE"))


def run_local(units: list[WorkUnit], parallel: int = 1, cwd: str | None = None,
              env: dict | None = None) -> dict[str, int]:
    """Returns {unit name: exit code} for the units it ran (skipped ones are absent)."""
    todo = [u for u in units if not is_done(u)]
    running: list[tuple[WorkUnit, subprocess.Popen, object]] = []
    codes: dict[str, int] = {}
    while todo or running:
        while todo and len(running) < parallel:
            u = todo.pop(0)
            os.makedirs(u.workdir, exist_ok=True)
            log = open(os.path.join(u.workdir, "launch.log"), "w")
            running.append((u, subprocess.Popen(u.argv(), stdout=log, stderr=subprocess.STDOUT,
                                                cwd=cwd, env=env), log))
        for item in list(running):
            u, p, log = item
            if p.poll() is not None:
                log.close()
                codes[u.name] = p.returncode
                if p.returncode == 0:
                    open(os.path.join(u.workdir, "DONE"), "w").close()
                running.remove(item)
        time.sleep(0.2)
    return codes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sweep", required=True, choices=sorted(SWEEPS))
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--root", default="runs/sweeps")
    ap.add_argument("--dry_run", action="store_true")
    a = ap.parse_args(argv)
    if a.parallel < 1:
        ap.error(f"--parallel={a.parallel}: must be >= 1")
    units = SWEEPS[a.sweep](a.root)
    if a.dry_run:
        for u in units:
            print(("[done] " if is_done(u) else "") + " ".join(u.argv()))
        return 0
    codes = run_local(units, a.parallel)
    failed = [n for n, c in codes.items() if c]
    print(f"{len(codes)} ran, {len(units) - len(codes)} skipped as done, {len(failed)} failed")
    for n in failed:
        print(f"  FAILED {n}: see its launch.log")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
