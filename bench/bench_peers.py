"""`make bench-peers`: warm_jax against its peers on this CPU, written into bench/results.json.

(A) Reward-model training on the shapes of `bench/peers/shapes.py` (a 3,033,600-parameter Llama RM,
32 pairs x 128 tokens = 8,192 tokens per step, f32, AdamW, clip 1.0): warm_jax's
`make_train_step(make_rm_loss)` (jitted, donated) against TRL's `RewardTrainer` and a plain PyTorch
Bradley–Terry loop, run from the peers' venv (`tools/peers_env.sh`). Every trainer is a worker
process that warms up first; then they take turns, `--steps` steps each, for `--rounds` rounds,
so load from other processes falls on all of them alike. Each turn records how many cores other
processes kept busy (`bench/peers/workers.py`); a trainer's speed is its best quiet turn (under
0.15 cores of other load), and `rm_train_over_trl` is null unless every trainer had one: under load
PyTorch's spinning OpenMP threads slow down several times more than XLA, so a loaded ratio says
little about this CPU. The `*_under_load` keys compare turns that saw the same load.
All trainers run with the same allocator settings: XLA:CPU maps a fresh ~1 GB temporary buffer per
step, so with glibc's defaults each step page-faults it in again (18% of the CPU time here); keeping
freed memory in the heap removes that. warm_jax sets them itself, as `python -m warm_jax.main` does
(`warm_jax.hostmem`, through mallopt); TRL and PyTorch are started with the same settings as
`GLIBC_TUNABLES` (`MALLOC`, below), so they get them too. warm_jax with glibc's defaults is
measured as well (`*_default_malloc`).
Also, warm_jax alone before and after this work (the source tree of `--baseline`, by default the
commit before it, taken with `git archive`): the RM step, the policy (LM) step on the same body and
shapes, and the KV-cache sampler (32 prompts of 64 tokens, 64 new tokens each).

(B) Weight averaging of M = 6 checkpoints of a 127.0M-parameter f32 Llama, each tool's command line
on the same weights: `python -m warm_jax.average OUT MEMBERS` (orbax members) against mergekit
0.1.5's `mergekit-yaml` (`linear`, on safetensors), each a fresh process under GNU time with its
inputs evicted from the page cache and the same environment (`_env(False)`: glibc's default
allocator, CPU JAX). Floor = the tool's own input bytes read cold + one write of its output bytes
(`bench/peers/disk.py`); wall includes start-up (`*_startup_s`: a process that only imports the
tool; `*_wall_minus_startup_over_floor` leaves it out). RSS = peak − the RSS of that import-only
process, over one checkpoint = 484.6 MiB (the f32 parameters). The tools take turns for
`--avg-rounds` rounds (the disk's speed drifts by tens of percent within minutes on a shared
machine, so the floor is measured right after each run); keys are medians over rounds, and
`*_wall_over_disk_floor_rounds` lists every round. warm_jax commits its output durably (orbax
fsyncs it) and mergekit does not; `*_wall_over_durable_floor` divides by a floor whose write is
fsynced too. GNU time's peak also counts pages
of input files a tool maps, so `*_anon_over_ckpt` gives the same ratio for anonymous memory only
(sampled from /proc every 10 ms).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

from warm_jax.hostmem import MALLOC_TUNABLES as MALLOC

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results.json")
PY = sys.executable
PEERS = os.environ.get("PEERS", os.path.join(ROOT, ".venv-peers"))
BASELINE = "a23cd5c"  # main before the peers work


def log(msg: str) -> None:
    print(f"[bench-peers] {msg}", file=sys.stderr, flush=True)


def _env(malloc: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    if malloc:
        env["GLIBC_TUNABLES"] = MALLOC
    return env


def baseline_tree(rev: str) -> str | None:
    """warm_jax/ of commit `rev` in a temporary directory (`git archive`: no change to the repo)."""
    tmp = tempfile.mkdtemp(prefix="warm_baseline_")
    tar = os.path.join(tmp, "src.tar")
    try:
        subprocess.run(["git", "-C", ROOT, "archive", "-o", tar, rev, "warm_jax"], check=True,
                       capture_output=True)
        with tarfile.open(tar) as t:
            t.extractall(tmp, filter="data")
        os.remove(tar)
        return tmp
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        log(f"no baseline {rev} ({e}): the *_before keys are skipped")
        shutil.rmtree(tmp, ignore_errors=True)
        return None


def wait_quiet(max_s: float) -> None:
    """Wait (up to `max_s`) for 15 s in a row in which other processes use < QUIET cores."""
    from bench.peers.workers import QUIET, busy_s
    t_end, calm = time.time() + max_s, 0
    while time.time() < t_end and calm < 3:
        b0 = busy_s()
        time.sleep(5)
        calm = calm + 1 if (busy_s() - b0) / 5 < QUIET else 0
    log("machine idle" if calm >= 3 else f"still busy after {max_s:.0f}s: measuring anyway")


def part_a(rounds: int, steps: int, baseline: str | None, baseline_rev: str = "") -> dict:
    from bench.peers import shapes as S
    from bench.peers.workers import alternate

    tpy = os.path.join(PEERS, "bin", "python")
    torch_rm = os.path.join(HERE, "peers", "torch_rm.py")

    def jax_worker(which, malloc=True, src=None, tune=False):
        argv = [PY, "-m", "bench.peers.jax_rm", which] + (["--src", src] if src else []) + (
            ["--tune-malloc"] if tune else [])
        return dict(argv=argv, env=_env(malloc), cwd=ROOT)

    # warm_jax as its entry point runs it (mallopt from warm_jax.hostmem), against the peers
    # started with the equivalent GLIBC_TUNABLES
    specs = {"rm": jax_worker("rm", malloc=False, tune=True), "trl": dict(argv=[tpy, torch_rm, "trl"], env=_env(True)),
             "torch": dict(argv=[tpy, torch_rm, "torch"], env=_env(True)),
             "rm_default_malloc": jax_worker("rm", malloc=False)}
    res = alternate(specs, rounds=rounds, steps=steps)
    for k, v in res.items():
        assert v["n_params"] == S.N_PARAMS, f"{k}: {v['n_params']} parameters, want {S.N_PARAMS}"

    def tps(name, quiet):
        times = res[name]["quiet_s_per_step" if quiet else "all_s_per_step"]
        return S.TOKENS_PER_STEP / min(times) if times else None

    def matched(a, b):
        """Median over rounds of b's time / a's time, on rounds where both saw about the same
        load from other processes (within 0.15 cores)."""
        r = [tb / ta for ta, tb, oa, ob in zip(res[a]["all_s_per_step"], res[b]["all_s_per_step"],
                                                 res[a]["others_cores"], res[b]["others_cores"])
             if abs(oa - ob) < 0.15]
        return round(statistics.median(r), 3) if r else None
    quiet = all(res[k]["quiet_s_per_step"] for k in ("rm", "trl", "torch"))
    best = {k: tps(k, True) for k in res}  # from quiet turns only: None if a trainer had none
    others = [o for v in res.values() for o in v["others_cores"]]
    if not quiet:
        log("WARNING: not every trainer had a quiet turn (other processes kept "
            f"{statistics.median(others):.2f} cores busy, median): rm_train_over_trl is not "
            "measured (null); *_under_load compares turns under the same load, which slows "
            "PyTorch's spinning OpenMP threads far more than XLA. Rerun on an idle machine.")

    def ratio(a, b):
        return round(best[a] / best[b], 3) if best[a] and best[b] else None

    def rnd(x):
        return round(x) if x else None
    out = {"rm_train_over_trl": ratio("rm", "trl"),
           "rm_train_over_torch": ratio("rm", "torch"),
           "rm_train_over_trl_default_malloc": ratio("rm_default_malloc", "trl"),
           "rm_train_over_trl_under_load": matched("rm", "trl"),
           "rm_train_over_torch_under_load": matched("rm", "torch"),
           "rm_train_tokens_per_s": rnd(best["rm"]),
           "rm_train_tokens_per_s_default_malloc": rnd(best["rm_default_malloc"]),
           "trl_rm_train_tokens_per_s": rnd(best["trl"]),
           "torch_rm_train_tokens_per_s": rnd(best["torch"]),
           "rm_train_tokens_per_s_under_load": rnd(tps("rm", False)),
           "trl_rm_train_tokens_per_s_under_load": rnd(tps("trl", False)),
           "torch_rm_train_tokens_per_s_under_load": rnd(tps("torch", False)),
           "rm_train_cpu_s_per_step": round(res["rm"]["cpu_s_per_step"], 3),
           "trl_rm_train_cpu_s_per_step": round(res["trl"]["cpu_s_per_step"], 3),
           "peers_quiet": quiet,
           "peers_quiet_turns": {k: len(v["quiet_s_per_step"]) for k, v in res.items()},
           "peers_other_load_cores_median": round(statistics.median(others), 2),
           "peers_malloc_tunables": MALLOC}
    if baseline:
        specs = {"policy": jax_worker("policy"), "policy_before": jax_worker("policy", src=baseline),
                 "sample": jax_worker("sample"), "sample_before": jax_worker("sample", src=baseline),
                 "rm_after": jax_worker("rm"), "rm_before": jax_worker("rm", src=baseline),
                 "rm_before_default_malloc": jax_worker("rm", malloc=False, src=baseline)}
        res = alternate(specs, rounds=max(2, rounds - 2), steps=steps)
        best = {k: min(v["all_s_per_step"]) for k, v in res.items()}

        def speedup(before, after):  # median over rounds of the paired ratio
            return round(statistics.median(b / a for b, a in zip(
                res[before]["all_s_per_step"], res[after]["all_s_per_step"])), 2)
        new_tokens = S.PAIRS * S.RESPONSE_LEN  # tokens the sampler draws per call
        out.update({
            "rm_train_tokens_per_s_before": round(S.TOKENS_PER_STEP / best["rm_before"]),
            "rm_train_tokens_per_s_before_default_malloc":
                round(S.TOKENS_PER_STEP / best["rm_before_default_malloc"]),
            "policy_train_tokens_per_s": round(S.TOKENS_PER_STEP / best["policy"]),
            "policy_train_tokens_per_s_before": round(S.TOKENS_PER_STEP / best["policy_before"]),
            "sample_tokens_per_s": round(new_tokens / best["sample"]),
            "sample_tokens_per_s_before": round(new_tokens / best["sample_before"]),
            "rm_train_speedup_over_before": speedup("rm_before", "rm_after"),
            "policy_train_speedup_over_before": speedup("policy_before", "policy"),
            "sample_speedup_over_before": speedup("sample_before", "sample"),
            "peers_baseline": baseline_rev})
    return out


def part_b(b_rounds: int = 3) -> dict:
    from bench.peers import disk
    from bench.peers.avg_setup import M
    work = tempfile.mkdtemp(prefix="warm_bench_peers_", dir=os.environ.get("BENCH_PEERS_TMP"))
    try:
        log(f"writing {M} members in both formats under {work}")
        out = subprocess.run([PY, "-m", "bench.peers.avg_setup", work], env=_env(False), cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout
        n_params = json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:])[
            "n_params"]
        ckpt_mb = n_params * 4 / 2**20
        wj_in = [os.path.join(work, "wj", f"m{i}") for i in range(M)]
        hf_in = [os.path.join(work, "hf", f"m{i}") for i in range(M)]
        cfg = os.path.join(work, "mergekit.yml")
        with open(cfg, "w") as f:
            f.write("merge_method: linear\ndtype: float32\nmodels:\n" + "".join(
                f"  - model: {d}\n    parameters:\n      weight: 1.0\n" for d in hf_in))
        tools = {
            "avg": dict(inputs=wj_in, out=os.path.join(work, "wj_out"), env=_env(False),
                        imports=[PY, "-c", "import warm_jax.average.soup"],
                        run=lambda o: [PY, "-m", "warm_jax.average", o] + wj_in),
            "mergekit": dict(inputs=hf_in, out=os.path.join(work, "mk_out"), env=_env(False),
                             imports=[os.path.join(PEERS, "bin", "python"), "-c",
                                      "import mergekit.scripts.run_yaml"],
                             run=lambda o: [os.path.join(PEERS, "bin", "mergekit-yaml"), cfg, o,
                                            "--quiet"])}
        res = {}
        rounds = {name: [] for name in tools}
        for r in range(b_rounds):  # tools alternate, so a slow spell of the disk hits both
            for name in (list(tools) if r % 2 == 0 else list(tools)[::-1]):
                t = tools[name]
                imp = disk.gnu_time(t["imports"], env=t["env"], cwd=ROOT)
                shutil.rmtree(t["out"], ignore_errors=True)
                disk.evict(*t["inputs"])
                run = disk.gnu_time(t["run"](t["out"]), env=t["env"], cwd=ROOT)
                out_bytes = disk.nbytes(t["out"])
                read_s = disk.read_cold_s(*t["inputs"])
                write_s = disk.write_s(work, out_bytes)
                floor = read_s + write_s
                durable = read_s + disk.write_s(work, out_bytes, durable=True)
                log(f"round {r} {name}: {run['wall_s']:.2f}s wall (imports alone "
                    f"{imp['wall_s']:.2f}s), floor {floor:.2f}s = read "
                    f"{disk.nbytes(*t['inputs']) / 2**20:.0f} MiB cold {read_s:.2f}s + write "
                    f"{out_bytes / 2**20:.0f} MiB {write_s:.2f}s; peak RSS "
                    f"{run['max_rss_mb']:.0f} MB (imports alone {imp['max_rss_mb']:.0f} MB), "
                    f"anonymous {run['max_anon_mb']:.0f} MB ({imp['max_anon_mb']:.0f} MB)")
                rounds[name].append(dict(run=run, imp=imp, floor=floor, durable=durable,
                                         read_s=read_s,
                                         write_s=write_s, out_bytes=out_bytes))
        med = statistics.median
        for name, t in tools.items():
            rs = rounds[name]
            ratio = [x["run"]["wall_s"] / x["floor"] for x in rs]
            res.update({
                f"{name}_wall_over_disk_floor": round(med(ratio), 2),
                f"{name}_wall_over_disk_floor_rounds": [round(v, 2) for v in ratio],
                f"{name}_rss_over_ckpt": round(med(
                    (x["run"]["max_rss_mb"] - x["imp"]["max_rss_mb"]) / ckpt_mb for x in rs), 2),
                f"{name}_anon_over_ckpt": round(med(
                    (x["run"]["max_anon_mb"] - x["imp"]["max_anon_mb"]) / ckpt_mb for x in rs), 2),
                f"{name}_wall_minus_startup_over_floor": round(med(
                    (x["run"]["wall_s"] - x["imp"]["wall_s"]) / x["floor"] for x in rs), 2),
                f"{name}_wall_s": round(med(x["run"]["wall_s"] for x in rs), 2),
                f"{name}_startup_s": round(med(x["imp"]["wall_s"] for x in rs), 2),
                f"{name}_disk_floor_s": round(med(x["floor"] for x in rs), 2),
                f"{name}_wall_over_durable_floor": round(med(
                    x["run"]["wall_s"] / x["durable"] for x in rs), 2),
                f"{name}_input_mb": round(disk.nbytes(*t["inputs"]) / 2**20, 1),
                f"{name}_output_mb": round(rs[-1]["out_bytes"] / 2**20, 1),
                f"{name}_peak_rss_mb": round(med(x["run"]["max_rss_mb"] for x in rs)),
                f"{name}_import_rss_mb": round(med(x["imp"]["max_rss_mb"] for x in rs))})
        res["avg_rounds"] = b_rounds
        res["avg_members_n_params"] = n_params
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("A", "B", "all"), default="all")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--avg-rounds", type=int, default=3,
                    help="(B) runs of each averaging tool, alternating; medians are reported")
    ap.add_argument("--wait-quiet", type=float, default=300,
                    help="seconds to wait for an idle machine before (A)")
    ap.add_argument("--baseline", default=os.environ.get("BASELINE", BASELINE),
                    help="git revision measured as *_before ('' to skip)")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(PEERS, "bin", "python")):
        sys.exit(f"{PEERS} is missing: run tools/peers_env.sh first")
    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    new = {}
    t0 = time.time()
    if args.part in ("A", "all"):
        tree = baseline_tree(args.baseline) if args.baseline else None
        wait_quiet(args.wait_quiet)
        try:
            new.update(part_a(args.rounds, args.steps, tree, args.baseline))
        finally:
            if tree:
                shutil.rmtree(tree, ignore_errors=True)
        log(f"A done ({time.time() - t0:.0f}s)")
    if args.part in ("B", "all"):
        new.update(part_b(args.avg_rounds))
    results.update(new)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    print(json.dumps(new, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
