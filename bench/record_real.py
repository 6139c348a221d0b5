"""Record the real-data run (`gin/experiments/hh_smollm2_top.gin`): its held-out report, members,
stage times and provenance as bench/real/<name>.json, from which `python -m bench.table --write`
generates README.md's real-data block.

    python -m bench.record_real runs/hh_smollm2_top
It refuses a run that resumed earlier work (its wall time would not be the whole run's)."""
import argparse
import json
import os
import sys

REAL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "real")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.record_real")
    ap.add_argument("workdir")
    ap.add_argument("--name", default="hh_smollm2_top", help="bench/real/<name>.json")
    ap.add_argument("--rm", default="clean/seed_0", help="the population under rm/")
    args = ap.parse_args(argv)

    from bench.record_demo import read_fresh_run
    run = read_fresh_run(args.workdir)
    if run is None:
        return 2
    info, timings = run
    from warm_jax.layout import RunLayout
    layout = RunLayout(args.workdir)
    if not os.path.exists(layout.heldout(args.rm)):
        print(f"error: {layout.heldout(args.rm)} does not exist: the run has no held-out report "
              "(its heldout stage did not run)", file=sys.stderr)
        return 2
    with open(layout.heldout(args.rm)) as f:
        heldout = json.load(f)
    with open(RunLayout.eval_rows(layout.rm(args.rm))) as f:
        members = [json.loads(line) for line in f if line.strip()]
    record = {"workdir": os.path.basename(os.path.normpath(args.workdir)),
              **{k: info.get(k) for k in ("commit", "cpu", "jax", "wall_s")},
              "timings": timings, "heldout": heldout,
              "members": [{k: m.get(k) for k in ("member", "learning_rate", "dropout", "train",
                                                  "validation", "test")} for m in members]}
    os.makedirs(REAL_DIR, exist_ok=True)
    out = os.path.join(REAL_DIR, f"{args.name}.json")
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
