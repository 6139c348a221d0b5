"""Run every benchmark (quick mode by default) and merge their numbers into bench/results.json."""
import argparse
import importlib
import json
import os
import time

BENCHES = ["bench.bench_models", "bench.bench_rm", "bench.bench_average", "bench.bench_rl"]
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (what `make bench` does)")
    ap.add_argument("--only", nargs="*", default=None, help="module names to run")
    args = ap.parse_args()
    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    for name in BENCHES:
        if args.only and name.split(".")[-1] not in args.only:
            continue
        t0 = time.time()
        out = importlib.import_module(name).run(quick=args.quick)
        print(f"{name}: {out}  ({time.time() - t0:.1f}s)", flush=True)
        results.update(out)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    print(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
