"""Weight averaging vs ensembling costs.

Keys:
  ens_over_wa_scoring     time to score the same pairs with ENS of M = 6 vs the averaged model
                          (goal >= 5.5; the limit is 6)
  avg_inproc_peak_rss_over_ckpt   (peak RSS while averaging M = 6 checkpoints of a 512 MB model −
                                  RSS just before) / one checkpoint's size
  avg_inproc_wall_over_disk_floor averaging wall time in a process that has imported everything
                                  (inputs evicted) / the disk floor: the members' bytes read cold +
                                  one write of the output's bytes
The goals (<= 2.5 and <= 1.5) are judged by `make bench-peers` (bench/bench_peers.py), which runs
the averaging command as a fresh process beside mergekit, start-up included; these keys leave the
start-up out and need no peers' environment.
The memory and I/O measurements run in a fresh subprocess so that nothing else sits in its heap.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time


M = 6


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _scoring(quick: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from bench.common import best_time
    from warm_jax.average.rewards import make_reward_function
    from warm_jax.models import RewardModel, preset, unbox
    # the 'small' preset (3.2M parameters): at the toy size (80k) a forward pass is too short for
    # the cost of M of them to show cleanly on a CPU
    cfg = preset("small")
    rm = RewardModel(cfg)
    toks = jnp.ones((1, 4), jnp.int32)
    members = [unbox(rm.init(jax.random.PRNGKey(i), toks, toks)["params"]) for i in range(M)]
    wa = jax.tree.map(lambda *xs: sum(xs) / M, *members)
    B = 128 if quick else 512
    prompt = jax.random.randint(jax.random.PRNGKey(0), (B, 16), 4, cfg.vocab_size)
    resp = jax.random.randint(jax.random.PRNGKey(1), (B, 12), 4, cfg.vocab_size)
    args = (prompt, jnp.ones_like(prompt), resp, jnp.ones_like(resp))
    call = jax.jit(lambda f, *a: f(*a))
    t_wa = best_time(call, make_reward_function(cfg, wa, "single"), *args, repeats=5)
    t_ens = {impl: best_time(call, make_reward_function(cfg, members, "ens", ensemble_impl=impl),
                             *args, repeats=5) for impl in ("map", "vmap")}
    # the key takes the faster ensemble on this machine; both are reported
    return {"ens_over_wa_scoring": round(min(t_ens.values()) / t_wa, 2),
            "ens_map_over_wa_scoring": round(t_ens["map"] / t_wa, 2),
            "ens_vmap_over_wa_scoring": round(t_ens["vmap"] / t_wa, 2)}


def _child(root: str, ckpt_mb: int) -> None:
    """Runs in a fresh process: the streaming average (inputs evicted from the page cache) under an
    RSS sampler, then the disk floor."""
    import gc

    import jax  # noqa: F401  (imported before the baseline is read)

    from bench.peers import disk
    from warm_jax.average.soup import average_checkpoints
    dirs = [os.path.join(root, f"m{i}") for i in range(M)]
    gc.collect()
    time.sleep(0.5)
    disk.evict(*dirs)
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    average_checkpoints(dirs, os.path.join(root, "avg_out"))
    t_avg = time.perf_counter() - t0
    done.set()
    th.join()
    # the disk floor: the members' bytes read cold, plus one write of the output's bytes
    out_bytes = disk.nbytes(os.path.join(root, "avg_out"))
    t_floor = disk.read_cold_s(*dirs) + disk.write_s(root, out_bytes)
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in
               os.walk(os.path.join(dirs[0])) for f in fs)
    print("RESULT " + json.dumps({
        "avg_inproc_peak_rss_over_ckpt": round((peak[0] - base) / (ckpt_mb << 20), 2),
        "avg_inproc_wall_over_disk_floor": round(t_avg / t_floor, 2),
        "avg_inproc_wall_s": round(t_avg, 2), "avg_inproc_disk_floor_s": round(t_floor, 2),
        "avg_inproc_ckpt_mb_on_disk": round(size / (1 << 20), 1)}))


def _memory(quick: bool) -> dict:
    ckpt_mb = 512
    root = tempfile.mkdtemp(prefix="warm_avg_bench_")
    try:
        code = f"""
import numpy as np, sys
sys.path.insert(0, {os.getcwd()!r})
from warm_jax.checkpoint import Checkpointer
leaves = 16
n = ({ckpt_mb} << 20) // 4 // leaves
for i in range({M}):
    rng = np.random.default_rng(i)
    params = {{f"layer_{{j}}": rng.standard_normal(n, dtype=np.float32) for j in range(leaves)}}
    Checkpointer({root!r} + f"/m{{i}}").save(1, {{"params": params}}, {{"base_fingerprint": "bench"}})
"""
        subprocess.run([sys.executable, "-c", code], check=True)
        out = subprocess.run([sys.executable, "-m", "bench.bench_average", "--child", root,
                              str(ckpt_mb)], check=True, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
        return json.loads(line[len("RESULT "):])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(quick: bool = True) -> dict:
    return {**_scoring(quick), **_memory(quick)}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]))
    else:
        print(run())
