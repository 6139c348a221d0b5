"""The Bradley–Terry loss, pair batching and per-split accuracy of reward models."""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.models.transformer import RewardModel

PAIR_KEYS = ("prompt", "prompt_mask", "chosen", "chosen_mask", "rejected", "rejected_mask")


def task_reward_model(task, model_cfg) -> RewardModel:
    """The reward model a task's pairs feed: on tokens, or on the cached states entering block
    `task.input_layer` (`warm_jax.rm.trunk.TrunkTask`)."""
    return RewardModel(model_cfg, input_layer=task.input_layer)


def bradley_terry(r_chosen_B: jax.Array, r_rejected_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(−mean log σ(r⁺ − r⁻), pairwise accuracy mean[r⁺ > r⁻])."""
    margin_B = r_chosen_B - r_rejected_B
    return -jnp.mean(jax.nn.log_sigmoid(margin_B)), jnp.mean((margin_B > 0).astype(jnp.float32))


def pair_rewards(model: RewardModel, params, batch: Mapping[str, jax.Array], *, dropout_rate=0.0,
                 deterministic=True, rng=None) -> tuple[jax.Array, jax.Array]:
    """Rewards of (prompt + chosen) and (prompt + rejected), in one forward pass of 2B sequences.
    A batch without "prompt" holds whole sequences (cached trunk states, `warm_jax.rm.trunk`),
    right-padded; the shorter of the two is padded to the other's length."""
    def seq(resp):
        if "prompt" not in batch:
            return batch[resp], batch[resp + "_mask"]
        return (jnp.concatenate([batch["prompt"], batch[resp]], 1),
                jnp.concatenate([batch["prompt_mask"], batch[resp + "_mask"]], 1))
    (tc, mc), (tr, mr) = seq("chosen"), seq("rejected")
    T = max(tc.shape[1], tr.shape[1])
    pad = lambda x: jnp.pad(x, [(0, 0), (0, T - x.shape[1])] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    (tc, mc), (tr, mr) = (pad(tc), pad(mc)), (pad(tr), pad(mr))
    rngs = {"dropout": rng} if rng is not None else {}
    r_2B = model.apply({"params": params}, jnp.concatenate([tc, tr]), jnp.concatenate([mc, mr]),
                       dropout_rate=dropout_rate, deterministic=deterministic, rngs=rngs)
    B = tc.shape[0]
    return r_2B[:B], r_2B[B:]


def make_rm_loss(model: RewardModel):
    """`loss_fn(params, batch, rng, dropout_rate)`; the dropout rate may be traced (per member)."""
    def loss_fn(params, batch, rng, dropout_rate):
        rc, rr = pair_rewards(model, params, batch, dropout_rate=dropout_rate,
                              deterministic=False, rng=rng)
        loss, acc = bradley_terry(rc, rr)
        r = jnp.concatenate([rc, rr])
        return loss, {"accuracy": acc, "reward_mean": r.mean(), "reward_std": r.std()}
    return loss_fn


def make_pair_scorer(model: RewardModel, batch_size: int = 256):
    """`score(params, split) -> (r_chosen_N, r_rejected_N)` over a whole split, in chunks."""
    fwd = jax.jit(lambda p, b: pair_rewards(model, p, b))

    def score(params, split: Mapping[str, np.ndarray]):
        n = len(split["chosen"])
        keys = [k for k in PAIR_KEYS if k in split]
        outs = [fwd(params, {k: split[k][i:i + batch_size] for k in keys})
                for i in range(0, n, batch_size)]
        return (np.concatenate([np.asarray(o[0]) for o in outs]),
                np.concatenate([np.asarray(o[1]) for o in outs]))
    return score


def split_accuracies(r_chosen: np.ndarray, r_rejected: np.ndarray, split_name: str,
                     flipped: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy against the split's stored labels. On a training split with corrupted labels this
    gives `train_corrupt` (agreement with flipped labels: memorisation) and `train_clean`."""
    correct = np.asarray(r_chosen) > np.asarray(r_rejected)
    out = {split_name: float(correct.mean())}
    if flipped is not None and np.any(flipped):
        out[f"{split_name}_corrupt"] = float(correct[flipped].mean())
        out[f"{split_name}_clean"] = float(correct[~flipped].mean())
    return out
