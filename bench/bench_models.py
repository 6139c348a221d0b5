"""KV-cache sampling vs full-prefix recompute, and train-step throughput of the demo model.

Keys: kv_cache_speedup (goal >= 5), train_tokens_per_s.
"""
import jax
import jax.numpy as jnp
import numpy as np

from bench.common import best_time
from warm_jax.losses import make_lm_loss
from warm_jax.models import LanguageModel, SamplingConfig, make_sampler, preset, unbox
from warm_jax.train import OptimConfig, make_optimizer, make_train_step, TrainState


def run(quick: bool = True) -> dict:
    cfg = preset("toy")
    lm = LanguageModel(cfg)
    B, P, N = 64, 32, 64
    prompt = jax.random.randint(jax.random.PRNGKey(0), (B, P), 4, cfg.vocab_size)
    params = unbox(lm.init(jax.random.PRNGKey(1), prompt)["params"])
    times = {}
    for use_cache in (True, False):
        sc = SamplingConfig(max_new_tokens=N, eos_id=-1, use_cache=use_cache)
        fn = jax.jit(make_sampler(lm, sc))
        times[use_cache] = best_time(lambda: fn(params, prompt, jnp.ones_like(prompt),
                                                jax.random.PRNGKey(2)).tokens_BxN,
                                     repeats=2 if quick else 5)
    # train step of the demo model on demo-shaped batches (64 sequences x 28 tokens)
    T = 28
    tx = make_optimizer(OptimConfig())
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(make_lm_loss(lm), tx))
    toks = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (64, T), 4, cfg.vocab_size))
    batch = {"tokens": toks, "mask": np.ones_like(toks), "loss_mask": np.ones_like(toks)}
    n_steps = 20 if quick else 100

    def many_steps():
        s = state
        for _ in range(n_steps):
            s, m = step(s, batch)
        return m["loss"]
    t_train = best_time(many_steps, repeats=2)
    return {"kv_cache_speedup": round(times[False] / times[True], 2),
            "kv_cache_sample_s": round(times[True], 4),
            "kv_recompute_sample_s": round(times[False], 4),
            "train_tokens_per_s": round(64 * T * n_steps / t_train, 1)}


if __name__ == "__main__":
    print(run())
