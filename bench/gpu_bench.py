"""GPU benchmark: (a) population speedup of M = 6 vmapped reward models, (b) RM-training MFU of a
~300M-parameter random-init decoder in bf16. Run through bench/gpu_bench.sh (it installs the deps).

    python -m bench.gpu_bench [--out bench/results_gpu.json]   # on one GPU, <= 6 minutes
    python -m bench.gpu_bench --cpu-smoke                        # same code, tiny shapes, CPU, < 60 s

(a) population_speedup[preset]: steady-state step time of 6 sequential single-member runs (summed)
    over that of one vmapped population step doing the same 6 members' work, compilation excluded,
    as bench/bench_rm.py measures it on CPU. Batches are random tokens already on the device (the
    data pipeline is not timed). The sequential runs share one compiled program (dropout passed as
    an argument); `*_with_compile` adds one compile per separate launch (6 for the sequential side).
(b) MFU = model FLOPs per step / step time / the chip's dense bf16 peak (H100 SXM and H200: 989
    TFLOP/s; table below, or --peak_tflops). Model FLOPs per step, PaLM's convention (appendix B):
        6 * N * tokens  +  12 * n_layers * n_heads * head_dim * T * tokens
    tokens = 2 * pairs * T (chosen and rejected sequences), N = the matmul parameters (attention and
    MLP weights and the reward head; the embedding table is a gather and a reward model has no LM
    head, so neither counts), and the attention term counts the full T x T score matrix, which is
    what this model computes (`mfu_causal` halves it: a flash kernel skipping masked blocks).
    Recomputation is not counted (there is none: no remat). Parameters are float32 master copies,
    every matmul runs in bf16 (ModelConfig.dtype='bfloat16'), AdamW updates in float32.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.models import RewardModel, preset, unbox
from warm_jax.models.config import ModelConfig
from warm_jax.rm.loss import make_rm_loss
from warm_jax.rm.population import make_member_step, member_state, population_step, stack
from warm_jax.train import OptimConfig, make_optimizer

M = 6
# dense (no sparsity) bf16 peak per chip, TFLOP/s, matched on jax.devices()[0].device_kind, lower
# case, first match wins ("NVIDIA H100 80GB HBM3" is the SXM part; "NVIDIA H100 PCIe", "... NVL")
PEAK_BF16_TFLOPS = (("h100 pcie", 756.0), ("h100 nvl", 835.0), ("h100", 989.0), ("h200", 989.0),
                    ("h800", 989.0), ("b200", 2250.0), ("a100", 312.0), ("l40s", 362.0),
                    ("tpu v6", 918.0), ("tpu v5p", 459.0), ("tpu v5", 197.0), ("tpu v4", 275.0))
# ~316M parameters (283M in matmuls): Llama-style shapes with a 32k vocabulary
MFU_MODEL = ModelConfig(vocab_size=32000, d_model=1024, n_layers=24, n_heads=16, n_kv_heads=8,
                        d_ff=2816, max_len=2048, dtype="bfloat16", param_dtype="float32")

FULL = {  # per-member pairs, prompt / response lengths, timed steps
    "population": {"toy": dict(pairs=32, prompt=16, response=16, steps=50),
                   "small": dict(pairs=16, prompt=128, response=128, steps=30)},
    # 2 x 64 x 256 = 32k tokens a step; the attention is plain XLA (full f32 T x T scores, no
    # flash kernel), memory-bound in T, so T = 256 (hh_smollm2's 192 + 64) rather than longer
    "mfu": dict(model=MFU_MODEL, pairs=(64, 32), prompt=128, response=128, steps=15),
    "warmup": 3,
}
SMOKE = {  # one layer each: on a busy 2-core CPU compilation is most of the time
    "population": {"toy": dict(pairs=4, prompt=8, response=8, steps=3, n_layers=1),
                   "small": dict(pairs=2, prompt=8, response=8, steps=2, n_layers=1, d_model=64,
                                 d_ff=128)},
    "mfu": dict(model=MFU_MODEL.replace(vocab_size=256, d_model=64, n_layers=1, n_heads=4,
                                        n_kv_heads=2, d_ff=128, max_len=64),
                pairs=(2,), prompt=16, response=16, steps=2),
    "warmup": 1,
}


def peak_tflops(device_kind: str) -> float | None:
    kind = device_kind.lower()
    return next((p for k, p in PEAK_BF16_TFLOPS if k in kind), None)


def matmul_params(cfg: ModelConfig) -> int:
    d, hd = cfg.d_model, cfg.resolved_head_dim
    attn = d * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    return cfg.n_layers * (attn + 3 * d * cfg.d_ff) + d  # + the reward head


def rm_step_flops(cfg: ModelConfig, pairs: int, seq_len: int, *, causal: bool = False) -> float:
    """Model FLOPs of one RM training step (forward + backward) on `pairs` preference pairs."""
    tokens = 2 * pairs * seq_len
    attn = 12 * cfg.n_layers * cfg.n_heads * cfg.resolved_head_dim * seq_len * tokens
    return 6.0 * matmul_params(cfg) * tokens + (attn / 2 if causal else attn)


def random_pairs(key, vocab: int, pairs: int, prompt: int, response: int) -> dict:
    k1, k2, k3 = jax.random.split(key, 3)
    tok = lambda k, n: jax.random.randint(k, (pairs, n), 1, vocab, jnp.int32)  # noqa: E731
    ones = lambda n: jnp.ones((pairs, n), jnp.int32)  # noqa: E731
    return {"prompt": tok(k1, prompt), "prompt_mask": ones(prompt), "chosen": tok(k2, response),
            "chosen_mask": ones(response), "rejected": tok(k3, response),
            "rejected_mask": ones(response)}


def init_params(cfg: ModelConfig, seed: int = 0):
    rm = RewardModel(cfg)
    dummy = jnp.ones((1, 4), jnp.int32)
    return rm, unbox(jax.jit(rm.init)(jax.random.PRNGKey(seed), dummy, dummy)["params"])


def timed(fn, state, batches, steps: int, warmup: int, *args):
    """(state, compile_s, seconds per step): the first call compiles, `warmup` more steps run
    untimed, then `steps` timed steps cycle through `batches`."""
    t0 = time.perf_counter()
    state, metrics = fn(state, batches[0], *args)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    for i in range(warmup):
        state, metrics = fn(state, batches[(i + 1) % len(batches)], *args)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for i in range(steps):
        state, metrics = fn(state, batches[i % len(batches)], *args)
    jax.block_until_ready((state, metrics))
    dt = (time.perf_counter() - t0) / steps
    if not np.all(np.isfinite(np.asarray(metrics["loss"]))):
        raise FloatingPointError(f"non-finite loss {metrics['loss']}")
    return state, compile_s, dt


def population_bench(name: str, spec: dict, warmup: int) -> dict:
    spec = dict(spec)
    pairs, P, R, steps = (spec.pop(k) for k in ("pairs", "prompt", "response", "steps"))
    cfg = preset(name, **spec)  # leftover keys shrink the preset (smoke mode)
    cfg = cfg.replace(max_len=max(cfg.max_len, P + R))
    rm, params = init_params(cfg)
    tx = make_optimizer(OptimConfig(learning_rate=1.0))
    step = make_member_step(make_rm_loss(rm), tx)
    lrs, drops = [1e-4, 3e-4, 1e-3] * 2, [0.0, 0.1] * 3
    states = [member_state(params, tx, lrs[i], i) for i in range(M)]
    n_b = 4  # distinct batches per member, cycled
    batches = [[random_pairs(jax.random.PRNGKey(100 * m + t), cfg.vocab_size, pairs, P, R)
                for t in range(n_b)] for m in range(M)]
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731  (donation consumes inputs)

    single = jax.jit(step, donate_argnums=0)  # (state, batch, dropout): one program for all runs
    t_seq, compile_single = 0.0, []
    for m in range(M):
        _, c, dt = timed(single, copy(states[m]), batches[m], steps, warmup, jnp.float32(drops[m]))
        t_seq += dt
        compile_single.append(c)
    pop = jax.jit(population_step(step, drops, "vmap"), donate_argnums=0)
    pop_batches = [jax.tree.map(lambda *xs: jnp.stack(xs), *[batches[m][t] for m in range(M)])
                   for t in range(n_b)]
    _, compile_pop, t_pop = timed(pop, stack(states), pop_batches, steps, warmup)
    compile_one = compile_single[0]  # the first compiles; later ones hit jit's cache
    return {"preset": name, "params": int(sum(x.size for x in jax.tree.leaves(params))),
            "pairs_per_member": pairs, "seq_len": P + R, "timed_steps": steps,
            "population_speedup": round(t_seq / t_pop, 2),
            "population_speedup_with_compile": round(
                (steps * t_seq + M * compile_one) / (steps * t_pop + compile_pop), 2),
            "population_step_ms": round(1e3 * t_pop, 3),
            "sequential_member_step_ms": round(1e3 * t_seq / M, 3),
            "compile_single_s": round(compile_one, 2), "compile_population_s": round(compile_pop, 2)}


def mfu_bench(spec: dict, warmup: int, peak: float | None) -> dict:
    cfg, P, R, steps = spec["model"], spec["prompt"], spec["response"], spec["steps"]
    T = P + R
    rm, params = init_params(cfg)
    tx = make_optimizer(OptimConfig(learning_rate=1e-4))
    step = jax.jit(make_member_step(make_rm_loss(rm), tx), donate_argnums=0)
    errors = []
    for pairs in spec["pairs"]:  # largest first; a smaller batch if it does not fit
        try:
            batches = [random_pairs(jax.random.PRNGKey(t), cfg.vocab_size, pairs, P, R)
                       for t in range(2)]
            state = member_state(jax.tree.map(jnp.array, params), tx, 1e-4, 0)
            _, compile_s, dt = timed(step, state, batches, steps, warmup, jnp.float32(0.0))
        except Exception as e:  # noqa: BLE001  (out of memory: try the next batch size)
            errors.append(f"pairs={pairs}: {type(e).__name__}: {str(e)[:300]}")
            continue
        flops, flops_causal = rm_step_flops(cfg, pairs, T), rm_step_flops(cfg, pairs, T,
                                                                          causal=True)
        out = {"params_total": int(sum(x.size for x in jax.tree.leaves(params))),
               "params_matmul": matmul_params(cfg), "model": _cfg_dict(cfg), "pairs": pairs,
               "seq_len": T, "tokens_per_step": 2 * pairs * T, "timed_steps": steps,
               "step_ms": round(1e3 * dt, 3), "tokens_per_s": round(2 * pairs * T / dt, 1),
               "model_tflop_per_step": round(flops / 1e12, 4),
               "achieved_tflops": round(flops / dt / 1e12, 3), "compile_s": round(compile_s, 2),
               "peak_bf16_tflops": peak,
               "mfu": None if peak is None else round(flops / dt / 1e12 / peak, 4),
               "mfu_causal": None if peak is None else round(flops_causal / dt / 1e12 / peak, 4)}
        if errors:
            out["larger_batches_failed"] = errors
        return out
    return {"errors": errors}


def _cfg_dict(cfg: ModelConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("vocab_size", "d_model", "n_layers", "n_heads",
                                         "n_kv_heads", "d_ff", "dtype", "param_dtype")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true",
                    default=os.environ.get("WARM_GPU_BENCH_SMOKE", "") not in ("", "0"),
                    help="tiny shapes on whatever backend is there (CPU here); env "
                         "WARM_GPU_BENCH_SMOKE=1 does the same")
    ap.add_argument("--out", default=None, help="default bench/results_gpu.json "
                                                "(smoke: runs/gpu_bench_smoke.json)")
    ap.add_argument("--peak_tflops", type=float, default=None, help="override the peak table")
    ap.add_argument("--only", nargs="*", default=None, help="toy small mfu (default: all)")
    ap.add_argument("--mfu_pairs", type=int, nargs="*", default=None, help="pairs per step to try")
    ap.add_argument("--mfu_lens", type=int, nargs=2, default=None, metavar=("PROMPT", "RESPONSE"))
    ap.add_argument("--budget_s", type=float, default=240.0,
                    help="skip the sections not started by then (the .sh stops it at 330 s)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    spec = SMOKE if a.cpu_smoke else FULL
    if a.mfu_pairs:
        spec = dict(spec, mfu=dict(spec["mfu"], pairs=tuple(a.mfu_pairs)))
    if a.mfu_lens:
        spec = dict(spec, mfu=dict(spec["mfu"], prompt=a.mfu_lens[0], response=a.mfu_lens[1]))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_path = a.out or (os.path.join(repo, "runs", "gpu_bench_smoke.json") if a.cpu_smoke
                         else os.path.join(repo, "bench", "results_gpu.json"))
    dev = jax.devices()[0]
    if not a.cpu_smoke and dev.platform != "gpu":
        print(f"no GPU (jax sees {dev.platform}: {dev.device_kind}); use --cpu-smoke",
              file=sys.stderr)
        return 2
    peak = a.peak_tflops or peak_tflops(dev.device_kind)
    import flax
    import jaxlib
    import optax
    res = {"device_kind": dev.device_kind, "platform": dev.platform,
           "device_count": jax.device_count(), "jax": jax.__version__,
           "jaxlib": jaxlib.__version__,
           "flax": flax.__version__, "optax": optax.__version__,
           "python": platform.python_version(), "cpu_smoke": a.cpu_smoke, "members": M,
           "mfu_definition": "(6*N_matmul*tokens + 12*L*H*head_dim*T*tokens) / step_s / "
                             "dense bf16 peak; tokens = 2*pairs*T", "skipped": [], "summary": {}}

    def save():
        res["wall_s"] = round(time.perf_counter() - t_start, 1)
        os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1, sort_keys=True)

    sections = [(n, lambda n=n: population_bench(n, spec["population"][n], spec["warmup"]))
                for n in ("toy", "small")]
    sections.append(("mfu", lambda: mfu_bench(spec["mfu"], spec["warmup"], peak)))
    for name, fn in sections:
        if a.only and name not in a.only:
            continue
        if time.perf_counter() - t_start > a.budget_s:
            res["skipped"].append(name)
            continue
        t0 = time.perf_counter()
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001  (record it; the other sections still run)
            r = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        r["section_s"] = round(time.perf_counter() - t0, 1)
        res["mfu" if name == "mfu" else f"population_{name}"] = r
        key, val = ("mfu", r.get("mfu")) if name == "mfu" else (f"population_speedup_{name}",
                                                                  r.get("population_speedup"))
        res["summary"][key] = val
        print(f"{name}: {json.dumps(r)}", flush=True)
        save()
    save()
    print(f"wrote {out_path} ({res['wall_s']} s)")
    print(json.dumps(res["summary"]))
    failed = [k for k, v in res.items() if isinstance(v, dict) and ("error" in v or "errors" in v)]
    return 1 if failed or res["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
