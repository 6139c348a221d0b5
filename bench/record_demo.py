"""Record a finished demo's wall time in bench/results.json as `demo_wall_s`.

    python -m bench.record_demo runs/demo
It refuses a run that resumed earlier work (its wall time would not be the whole pipeline's)."""
import json
import os
import sys

from bench.run_all import RESULTS


def main(workdir: str) -> int:
    info = json.load(open(os.path.join(workdir, "run_info.json")))
    timings = json.load(open(os.path.join(workdir, "timings.json")))
    if "wall_s" not in info or sum(timings.values()) > info["wall_s"] + 1:
        print(f"error: {workdir} resumed earlier work or did not finish; record a fresh run",
              file=sys.stderr)
        return 2
    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    results["demo_wall_s"] = info["wall_s"]
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    print(f"demo_wall_s = {info['wall_s']} ({info['mode']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
