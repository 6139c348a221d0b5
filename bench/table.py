"""The documentation's generated blocks: the benchmark table (docs/benchmarks.md, from
bench/results.json and results_gpu.json), the recorded runs' claims (docs/results.md, from
bench/claims/*.json) and their primary claims (README.md).

    python -m bench.table --write     # rewrite every marked block of README.md and docs/
    python -m bench.table             # print the benchmark table

Every number in the block comes from the results files; the goals are declared here, once. A key
missing from the results shows as "not measured", never as an old number.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
README = os.path.join(REPO, "README.md")
RESULTS_MD = os.path.join(REPO, "docs", "results.md")
BENCH_MD = os.path.join(REPO, "docs", "benchmarks.md")
RESULTS = os.path.join(HERE, "results.json")
RESULTS_GPU = os.path.join(HERE, "results_gpu.json")

# (key, what it is, goal as (op, value) or None); the order is the table's
ROWS = [
    ("rm_train_over_trl", "RM training tokens/s, warm_jax / TRL RewardTrainer (3.03M Llama RM, "
     "8,192 tokens/step, quiet turns; `make bench-peers`; warm_jax runs the last layer for the "
     "scored token only, which TRL's full-sequence head does not)", (">=", 1.0)),
    ("rm_train_over_trl_default_malloc", "the same, warm_jax with glibc's default allocator "
     "(`WARM_JAX_DEFAULT_MALLOC=1`; TRL keeps the tuned one)", None),
    ("rm_train_over_torch", "RM training tokens/s, warm_jax / plain PyTorch loop", None),
    ("rm_train_tokens_per_s", "warm_jax RM training tokens/s (same shapes)", None),
    ("trl_rm_train_tokens_per_s", "TRL RewardTrainer tokens/s (same shapes, same run)", None),
    ("torch_rm_train_tokens_per_s", "plain PyTorch Bradley–Terry loop tokens/s", None),
    ("rm_train_speedup_over_before", "RM step, this code / before the speed work", None),
    ("policy_train_speedup_over_before", "policy step, this code / before", None),
    ("sample_speedup_over_before", "KV-cache sampler, this code / before", None),
    ("avg_wall_over_disk_floor", "averaging M=6 × 127M f32, `python -m warm_jax.average` as a "
     "fresh process, start-up included: wall / (its input read cold + its output written); "
     "median of `avg_rounds` rounds", ("<=", 1.5)),
    ("avg_wall_over_disk_floor_rounds", "the same, every round", None),
    ("avg_wall_over_durable_floor", "the same, over a floor whose write is fsynced (orbax "
     "commits durably; mergekit does not fsync)", None),
    ("avg_wall_minus_startup_over_floor", "the same without start-up (`avg_startup_s`)", None),
    ("avg_rss_over_ckpt", "averaging: (peak RSS − import-only RSS) / one checkpoint", ("<=", 2.5)),
    ("avg_anon_over_ckpt", "the same, anonymous memory only (no mapped file pages)", None),
    ("avg_wall_s", "averaging wall seconds, median", None),
    ("avg_startup_s", "seconds a process takes to import warm_jax's averaging", None),
    ("avg_disk_floor_s", "averaging floor, seconds", None),
    ("avg_inproc_wall_over_disk_floor", "averaging in a process that has already imported "
     "everything (`make bench`, 6 × 512 MB) / its floor", None),
    ("mergekit_wall_s", "mergekit 0.1.5 `mergekit-yaml` linear, same weights: wall seconds",
     None),
    ("mergekit_wall_over_disk_floor", "mergekit: wall / its floor (same rounds)", None),
    ("mergekit_wall_minus_startup_over_floor", "mergekit without its start-up / its floor",
     None),
    ("mergekit_rss_over_ckpt", "mergekit: (peak RSS − import-only RSS) / one checkpoint (counts "
     "its memory-mapped inputs)", None),
    ("mergekit_anon_over_ckpt", "mergekit: the same, anonymous memory only", None),
    ("ens_over_wa_scoring", "scoring cost, ENS of 6 / WARM average (`small` preset)",
     (">=", 5.5)),
    ("kv_cache_speedup", "sampling with a KV cache / recomputing the prefix", (">=", 5.0)),
    ("population_speedup", "population of 6 (vmap) / six sequential runs, steady state "
     "(an accelerator goal)", (">=", 3.0)),
    ("population_map_speedup", "population of 6 (lax.map, the CPU default) / sequential", None),
    ("rl_step_flops_over_peak", "RL step of the demo (5 vmapped runs, batch 64, toy policy): "
     "achieved model FLOP/s / the CPU's fp32 peak (`python -m bench.bench_rl`)", None),
    ("rl_step_ms", "that RL step, milliseconds (in a 25-step chunk)", None),
    ("rl_step_gflops", "that RL step, achieved model GFLOP/s", None),
    ("cpu_peak_gflops", "the CPU's fp32 peak, GFLOP/s (`cpu_peak_basis`)", None),
    ("demo_wall_s", "`make demo` stages, seconds", ("<=", 600.0)),
    ("demo_full_wall_s", "`make demo FULL=1` stages, seconds", ("<=", 3600.0)),
    ("test_wall_s", "`make test` pytest seconds, fresh clone (`python -m bench.record_test`)",
     ("<=", 600.0)),
    ("test_total_s", "`make test` seconds including the venv install, fresh clone", ("<=", 720.0)),
    ("test_passed", "tests passed in that run", None),
]
GPU_ROWS = [
    ("population_speedup_toy", "GPU: population of 6 (vmap) / sequential, toy preset", (">=", 3.0)),
    ("population_speedup_small", "GPU: same, small preset", (">=", 3.0)),
    ("mfu", "GPU: RM training MFU, ~300M decoder, bf16", (">=", 0.35)),
]

BEGIN = "<!-- bench:begin (generated by python -m bench.table --write) -->"
END = "<!-- bench:end -->"


def _met(value, goal) -> str:
    if goal is None or value is None:
        return ""
    op, target = goal
    ok = value >= target if op == ">=" else value <= target
    return "met" if ok else "**not met**"


def _fmt(v) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _rows(results: dict, rows) -> list[str]:
    out = []
    for key, what, goal in rows:
        v = results.get(key)
        g = "" if goal is None else f"{goal[0].replace('>=', '≥').replace('<=', '≤')} {goal[1]:g}"
        out.append(f"| `{key}` | {what} | {_fmt(v)} | {g} | {_met(v, goal)} |")
    return out


def block(results: dict, gpu: dict | None) -> str:
    lines = ["| key | what | value | goal | |", "|---|---|---|---|---|"] + _rows(results, ROWS)
    if gpu:
        lines += _rows(gpu.get("summary", {}), GPU_ROWS)
        lines += ["", f"GPU rows: `bench/results_gpu.json` ({gpu.get('device_kind', '?')})."]
    else:
        lines += ["", "GPU rows: `bench/gpu_bench.sh` is prepared and has not been run on a GPU "
                      "yet (no `bench/results_gpu.json`)."]
    meta = [f"{k} = {results[k]}" for k in ("peers_quiet", "peers_other_load_cores_median")
            if k in results]
    if meta:
        lines += ["", "Conditions of the peers run: " + ", ".join(meta) + "."]
    return "\n".join(lines)


def load(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def rewrite(path: str, text: str) -> None:
    from warm_jax.eval.tables import rewrite_block
    rewrite_block(path, BEGIN, END, text, name="bench")


CLAIMS_DIR = os.path.join(HERE, "claims")
BASE_SEED_RUNS = ("demo", "demo_seed1")   # bench/claims/<name>.json, recorded by bench.record_demo
FULL_RUN = "demo_full"                     # `make demo FULL=1`: python -m bench.record_demo --name
# `make demo` on a second CPU, per base seed: (first CPU's record, second CPU's)
CPU_RUNS = (("demo", "demo_amd_epyc"), ("demo_seed1", "demo_seed1_amd_epyc"))
NO_DEMO = "No `make demo` run is recorded in the calibrated RL regime yet."
NO_BASE = ("Fewer than two base seeds are recorded in the calibrated RL regime so far: the "
           "base-seed check needs both `demo` and `demo_seed1`.")
NO_CPU = "No `make demo` run on a second CPU is recorded with the first CPU's base seed."
NO_FULL = ("No `make demo FULL=1` run is recorded in the calibrated RL regime yet (its earlier "
           "record, from the 400-step regime, was withdrawn with that regime).")


REAL_RUN = os.path.join(HERE, "real", "hh_smollm2_top.json")   # bench.record_real
REAL_BEGIN = "<!-- real:begin (generated by python -m bench.table --write) -->"
REAL_END = "<!-- real:end -->"
NO_REAL = "No real-data run is recorded yet (`python -m bench.record_real runs/hh_smollm2_top`)."


def _verdict(d: dict, pair: str) -> str:
    lo, hi = d["ci"]
    if d.get("bound") is not None:
        return (f"{d['mean']:+.3f}: {pair} prefer the same response on all {d['pairs']} pairs, "
                f"so the difference is below {d['bound']:.3f} (95%): inconclusive; a difference "
                f"that large would take about {d['pairs_needed_at_bound']:,} pairs to decide, a "
                "smaller one more")
    if lo > 0 or hi < 0:
        return f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]: WA {'better' if lo > 0 else 'worse'}"
    need = f"; about {d['pairs_needed']:,} pairs would decide it at this effect and spread" \
        if d.get("pairs_needed") else ""
    return f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]: inconclusive{need}"


def real_block(r: dict) -> str:
    """README's real-data block: accuracies with intervals, WA − ENS, WA − best, time, export."""
    from warm_jax.progress import hms
    h = r["heldout"]
    M = h["members"]
    names = {"WA": f"WA: the weight average of the {M} members",
             "ENS": f"ENS: the mean of the {M} members' rewards", "WCO": "WCO: their minimum",
             "UWO": f"UWO: their mean − {h['uwo_lambda']:g} × their variance"}
    specs = {f"member_{m['member']}": m for m in r["members"]}
    lines = [f"| reward model | accuracy on the {h['pairs']} held-out pairs [95% interval] |",
             "|---|---|"]
    if "probe_accuracy" in h:
        lo, hi = h["probe_accuracy_ci"]
        lines.append(f"| the shared linear probe (the members' init) | "
                     f"{h['probe_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] |")
    for k, acc in h["accuracy"].items():
        lo, hi = h["accuracy_ci"][k]
        m = specs.get(k)
        name = (f"member {m['member']} (learning rate {m['learning_rate']:g}, dropout "
                f"{m['dropout']:g})" if m else names.get(k, k))
        lines.append(f"| {name} | {acc:.3f} [{lo:.3f}, {hi:.3f}] |")
    best = h["wa_minus_best_member"]
    best_name = best["member"].replace("_", " ")
    text = (f"WA − ENS: {_verdict(h['wa_minus_ens'], 'WA and ENS')}. WA − best member "
            f"({best_name}, best on the {h['best_chosen_on']} pairs): "
            f"{_verdict(best, f'WA and {best_name}')}.")
    if "distance_from_probe" in h:
        d = h["distance_from_probe"]
        text += (f" Fine-tuning moved the members from the probe by a relative distance of "
                 f"{min(d):.2%} to {max(d):.2%}, and WA's and ENS's reward margins correlate at "
                 f"{h['wa_ens_margin_correlation']:.7f} over the pairs")
        text += (": the linear regime, where averaging weights and averaging rewards coincide."
                 if h["wa_minus_ens"]["differing"] == 0 else ".")
    stages = ", ".join(f"{k} {hms(v)}" for k, v in r["timings"].items())
    e = h["export"]
    lines += ["", text, "",
              f"Recorded at commit {(r.get('commit') or 'unknown')[:7]} on {r['cpu']} (jax "
              f"{r['jax']}): {hms(r['wall_s'])} in all ({stages}). The exported WA, scored from "
              f"tokens by the whole model, matches its scores on the cached states to "
              f"{e['max_abs_diff']:.1e} on {e['pairs_checked']} held-out pairs."]
    return "\n".join(lines)


def claims_blocks() -> dict[str, dict[tuple[str, str], str]]:
    """{file: {(begin, end): text}}: docs/results.md's claims and base-seed blocks and README's
    primary claims, from bench/claims/."""
    from warm_jax.eval import tables as T
    records = {n: load(os.path.join(CLAIMS_DIR, f"{n}.json"))
               for n in BASE_SEED_RUNS + (FULL_RUN,) + tuple(b for _, b in CPU_RUNS)}
    demo, full = records["demo"], records[FULL_RUN]
    out: dict = {RESULTS_MD: {}, README: {}}
    out[RESULTS_MD][(T.DEMO_BEGIN, T.DEMO_END)] = (
        T.claims_block(demo) if demo is not None else
        T.claims_block(records["demo_seed1"]) if records["demo_seed1"] is not None else NO_DEMO)
    out[RESULTS_MD][(T.BASE_BEGIN, T.BASE_END)] = (
        T.base_seed_block([records[n] for n in BASE_SEED_RUNS])
        if all(records[n] for n in BASE_SEED_RUNS) else NO_BASE)
    pairs = [[records[a], records[b]] for a, b in CPU_RUNS if records[a] and records[b]]
    out[RESULTS_MD][(T.CPU_BEGIN, T.CPU_END)] = T.cpu_block(pairs) if pairs else NO_CPU
    out[RESULTS_MD][(T.FULL_BEGIN, T.FULL_END)] = (
        T.claims_block(full) if full is not None else NO_FULL)
    runs = []
    second_cpu = [(b, "`make demo` on {cpu}{seed}") for _, b in CPU_RUNS]
    for name, label in (("demo", "`make demo`"), ("demo_seed1", "`make demo`, base seed 1"),
                        *second_cpu, (FULL_RUN, "`make demo FULL=1`")):
        r = records[name]
        if r is not None:   # a second CPU's column is named by its own record's CPU and seed
            label = label.format(cpu=r.get("cpu", "").split(" x ")[0],
                                 seed=f", base seed {r['base_seed']}" if r.get("base_seed") else "")
            runs.append((f"{label} ({len(T.chain_seeds(r['claims']))} seeds)", r))
    if runs:
        out[README][(T.PRIMARY_BEGIN, T.PRIMARY_END)] = T.primary_block(runs)
    real = load(REAL_RUN)
    out[README][(REAL_BEGIN, REAL_END)] = real_block(real) if real else NO_REAL
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.table", description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true",
                    help="rewrite the generated blocks of README.md and docs/")
    ap.add_argument("--results", default=RESULTS)
    ap.add_argument("--results-gpu", default=RESULTS_GPU)
    args = ap.parse_args(argv)
    results = load(args.results)
    if results is None:
        print(f"error: {args.results} does not exist: run `make bench` first", file=sys.stderr)
        return 2
    text = block(results, load(args.results_gpu))
    if args.write:
        from warm_jax.eval.tables import rewrite_block
        rewrite(BENCH_MD, text)
        for path, blocks in claims_blocks().items():
            for (begin, end), block_text in blocks.items():
                rewrite_block(path, begin, end, block_text, name="claims")
        print(f"rewrote the generated blocks of {os.path.relpath(README, REPO)}, "
              f"{os.path.relpath(RESULTS_MD, REPO)} and {os.path.relpath(BENCH_MD, REPO)}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
