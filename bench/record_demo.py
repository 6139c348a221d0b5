"""Record a finished demo: its wall time in bench/results.json as `demo_wall_s` (`demo_full_wall_s`
for a FULL=1 run), its claims as bench/claims/<name>.json, from which `python -m bench.table
--write` generates the documentation's claims blocks, and (for the default demo, `--name demo`)
its hacking figure as docs/figures/hacking.png and .pdf, the README's first picture.

    python -m bench.record_demo runs/demo                       # -> demo_wall_s, claims/demo.json
    python -m bench.record_demo runs/demo_seed1 --name demo_seed1 --no-wall
    python -m bench.record_demo runs/demo_full --name demo_full  # -> demo_full_wall_s
It refuses a run that resumed earlier work (its wall time would not be the whole pipeline's)."""
import argparse
import json
import os
import sys

from bench.run_all import RESULTS

CLAIMS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "claims")


def read_fresh_run(workdir: str) -> tuple[dict, dict] | None:
    """(run_info, timings) of a run that finished in one launch; None (said on stderr) for one
    that resumed earlier work or did not finish: its wall time would not be the whole run's."""
    info = json.load(open(os.path.join(workdir, "run_info.json")))
    timings = json.load(open(os.path.join(workdir, "timings.json")))
    if "wall_s" not in info or sum(timings.values()) > info["wall_s"] + 1:
        print(f"error: {workdir} resumed earlier work or did not finish; record a fresh run",
              file=sys.stderr)
        return None
    return info, timings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.record_demo")
    ap.add_argument("workdir")
    ap.add_argument("--name", default="demo", help="bench/claims/<name>.json")
    ap.add_argument("--no-wall", action="store_true", help="do not record demo_wall_s")
    ap.add_argument("--commit", help="the commit the run's code was (for runs whose run_info.json "
                                     "does not record it)")
    args = ap.parse_args(argv)
    from warm_jax.layout import RunLayout
    from warm_jax.report import run_record
    run = read_fresh_run(args.workdir)
    if run is None:
        return 2
    info, _ = run
    os.makedirs(CLAIMS_DIR, exist_ok=True)
    record = run_record(RunLayout(args.workdir))
    if record.get("commit") is None:   # a run from before run_info recorded its provenance
        if not args.commit:
            print(f"error: {args.workdir}/run_info.json names no commit: give --commit",
                  file=sys.stderr)
            return 2
        from warm_jax.main import provenance
        record.update(commit=args.commit, cpu=provenance()["cpu"],
                      provenance_from="--commit, and the CPU of the recording machine")
    with open(os.path.join(CLAIMS_DIR, f"{args.name}.json"), "w") as f:
        json.dump(record, f, indent=1)
    if not args.no_wall:
        results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
        key = "demo_full_wall_s" if str(info.get("mode")).startswith("FULL=1") else "demo_wall_s"
        results[key] = info["wall_s"]
        with open(RESULTS, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
        print(f"{key} = {info['wall_s']} ({info['mode']})")
    print(f"wrote bench/claims/{args.name}.json")
    if args.name == "demo":
        import shutil
        figures = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "docs", "figures")
        os.makedirs(figures, exist_ok=True)
        for ext in ("png", "pdf"):
            shutil.copyfile(os.path.join(args.workdir, "figures", f"hacking.{ext}"),
                            os.path.join(figures, f"hacking.{ext}"))
        print("wrote docs/figures/hacking.png and .pdf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
