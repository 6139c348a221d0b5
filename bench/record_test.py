"""Record a `make test` run in bench/results.json: `test_wall_s` (pytest's own seconds), the counts,
and `test_total_s` (the whole command, the venv install included) when given.

    /usr/bin/time -f %e -o total.txt make test 2>&1 | tee test.log
    python -m bench.record_test test.log --total-s "$(cat total.txt)"

It refuses a log whose run failed or collected nothing: only a green suite's time is recorded."""
import argparse
import json
import os
import re
import sys

from bench.run_all import RESULTS

SUMMARY = re.compile(r"^=*\s*(?P<counts>(\d+ \w+(, )?)+) in (?P<secs>[\d.]+)s")


def parse(log_text: str) -> dict:
    """{'passed': .., 'skipped': .., 'seconds': ..} from pytest's last summary line."""
    for line in reversed(log_text.splitlines()):
        m = SUMMARY.match(line.strip())
        if m:
            counts = {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", m["counts"])}
            return {**counts, "seconds": float(m["secs"])}
    raise ValueError("no pytest summary line ('N passed ... in S s') in the log")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.record_test", description=__doc__)
    ap.add_argument("log")
    ap.add_argument("--total-s", type=float, help="the whole `make test`, install included")
    args = ap.parse_args(argv)
    try:
        run = parse(open(args.log, encoding="utf-8").read())
    except (OSError, ValueError) as e:
        print(f"error: {args.log}: {e}", file=sys.stderr)
        return 2
    bad = {k: run.get(k, 0) for k in ("failed", "error", "errors")}
    if any(bad.values()) or not run.get("passed"):
        print(f"error: {args.log}: not a green run ({run}); record a passing one", file=sys.stderr)
        return 2
    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    results.update({"test_wall_s": round(run["seconds"], 1), "test_passed": run["passed"],
                    "test_skipped": run.get("skipped", 0)})
    if args.total_s is not None:
        results["test_total_s"] = round(args.total_s, 1)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    print(f"test_wall_s = {results['test_wall_s']} ({run})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
