"""JAX side of `make bench-peers` (runs in the project's venv), same protocol as `torch_rm.py`:
warm up, print `@@ready N_PARAMS`, then for each `run K` train K steps and print
`@@done WALL_S CPU_S ...`.

`python -m bench.peers.jax_rm rm|policy|sample [--src DIR] [--tune-malloc]`:
  rm      `make_train_step(make_rm_loss)`, jitted with donation, 32 pairs x 128 tokens;
  policy  `make_train_step(make_lm_loss)` of the same body with its LM head, 64 sequences x 128;
  sample  one step = the KV-cache sampler drawing 64 tokens after 32 prompts of 64 (2,048 tokens).
Each step feeds a host (numpy) batch and reads the metrics back, as `warm_jax.train.fit` does (one
host sync per step, like the PyTorch loops' `.item()`). `--src DIR` imports warm_jax from another
source tree (a baseline checkout) instead of this one. `--tune-malloc` applies
`warm_jax.hostmem.tune_host_allocator` first, as the launch entry point does.
"""
import os
import sys
import time


def cpu_s() -> float:
    """CPU seconds of this process (all threads): less sensitive to other load than wall time."""
    t = os.times()
    return t.user + t.system


def reply(msg: str) -> None:
    sys.stdout.write(f"@@{msg}\n")
    sys.stdout.flush()


def config():
    from bench.peers import shapes as S
    from warm_jax.models.config import ModelConfig
    return ModelConfig(vocab_size=S.VOCAB, d_model=S.D_MODEL, n_layers=S.N_LAYERS,
                       n_heads=S.N_HEADS, n_kv_heads=S.N_KV_HEADS, d_ff=S.D_FF, max_len=S.SEQ_LEN,
                       rope_theta=S.ROPE_THETA, norm_eps=S.NORM_EPS)


def build_sampler():
    """(step, state, batches, n_params) where a step samples and returns (state, {"loss": ...})."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bench.peers import shapes as S
    from warm_jax.models import LanguageModel, SamplingConfig, make_sampler, unbox

    lm = LanguageModel(config())
    dummy = jnp.ones((1, 4), jnp.int32)
    params = unbox(lm.init(jax.random.PRNGKey(0), dummy)["params"])
    sample = make_sampler(lm, SamplingConfig(max_new_tokens=S.RESPONSE_LEN, eos_id=-1))

    @jax.jit
    def step(state, batch):
        params, rng = state
        rng, key = jax.random.split(rng)
        out = sample(params, batch["prompt"], batch["prompt_mask"], key)
        return (params, rng), {"loss": out.logprobs_BxN.mean()}
    batches = [{k: b[k] for k in ("prompt", "prompt_mask")} for b in S.batches(8)]
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return step, (params, jax.random.PRNGKey(1)), batches, n_params


def build(which: str):
    """(step, state, batches, n_params) for `rm`, `policy` or `sample`."""
    if which == "sample":
        return build_sampler()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bench.peers import shapes as S
    from warm_jax.losses import make_lm_loss
    from warm_jax.models import LanguageModel, RewardModel, unbox
    from warm_jax.rm.loss import make_rm_loss
    from warm_jax.train import OptimConfig, TrainState, make_optimizer, make_train_step

    cfg = config()
    tx = make_optimizer(OptimConfig(learning_rate=S.LR, weight_decay=S.WEIGHT_DECAY,
                                    grad_clip=S.CLIP, b1=S.B1, b2=S.B2))
    dummy = jnp.ones((1, 4), jnp.int32)
    data = S.batches(8)
    if which == "rm":
        model = RewardModel(cfg)
        params = unbox(model.init(jax.random.PRNGKey(0), dummy, dummy)["params"])
        rm_loss = make_rm_loss(model)
        loss_fn = lambda p, b, r: rm_loss(p, b, r, 0.0)  # noqa: E731
        batches = data
    else:
        model = LanguageModel(cfg)
        params = unbox(model.init(jax.random.PRNGKey(0), dummy)["params"])
        loss_fn = make_lm_loss(model)
        batches = []
        for b in data:
            toks = np.concatenate([np.concatenate([b["prompt"], b[r]], 1)
                                   for r in ("chosen", "rejected")])
            batches.append({"tokens": toks, "mask": np.ones_like(toks),
                            "loss_mask": np.ones_like(toks)})
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(loss_fn, tx), donate_argnums=0)
    return step, state, batches, n_params


def main():
    which = sys.argv[1]
    if "--src" in sys.argv:
        sys.path.insert(0, os.path.abspath(sys.argv[sys.argv.index("--src") + 1]))
    if "--tune-malloc" in sys.argv:  # what `python -m warm_jax.main` does before JAX starts
        from warm_jax.hostmem import tune_host_allocator
        if not tune_host_allocator():
            sys.exit("tune_host_allocator did not apply (GLIBC_TUNABLES set, or not glibc)")
    import jax
    step, state, batches, n_params = build(which)
    i = 0
    for _ in range(3):  # compile + warm up
        state, metrics = step(state, batches[i % len(batches)])
        jax.device_get(metrics)
        i += 1
    reply(f"ready {n_params}")
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        t0, c0 = time.perf_counter(), cpu_s()
        for _ in range(int(cmd[1])):
            state, metrics = step(state, batches[i % len(batches)])
            jax.device_get(metrics)
            i += 1
        reply(f"done {time.perf_counter() - t0:.6f} {cpu_s() - c0:.6f} loss={float(metrics['loss']):.6f}")
    reply("bye")


if __name__ == "__main__":
    main()
