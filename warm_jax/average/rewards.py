"""One reward-function interface for best-of-N and RL: single RM, WARM (an averaged RM is a single
RM), ENS (mean of M), WCO (worst case: min over M) and UWO (mean − λ·variance; Coste et al. 2023).

A `RewardFunction` is a pytree (parameters, normalisation) with static metadata, so it is passed
into jitted steps as an argument. Ensembles evaluate all members in one vmapped forward pass.
Rewards can be z-normalised (e.g. on SFT samples): reward scale interacts with the KL strength α,
so the shift and scale are part of the function and are reported with every run.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.models import ModelConfig, RewardModel
from warm_jax.rm.population import platform_impl

KINDS = ("single", "ens", "wco", "uwo")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """A reward function by name: `single | warm_M<k> | greedy | ens | wco | uwo`, where an
    ensemble may name its size (`ens_M2`: the ensemble of the k members `warm_M<k>` averages)."""
    kind: str          # single, warm, greedy, ens, wco, uwo
    m: int | None = None

    ENSEMBLES = ("ens", "wco", "uwo")
    ALLOWED = "single | warm_M<k> | greedy | ens | wco | uwo | ens_M<k> | wco_M<k> | uwo_M<k>"

    @classmethod
    def parse(cls, text: str) -> "RewardSpec":
        m = re.fullmatch(r"(warm|ens|wco|uwo)_M([1-9]\d*)", text)
        if m:
            return cls(m.group(1), int(m.group(2)))
        if text in ("single", "greedy") + cls.ENSEMBLES:
            return cls(text)
        raise ValueError(f"reward {text!r}: allowed {cls.ALLOWED}")

    def __str__(self) -> str:
        return self.kind if self.m is None else f"{self.kind}_M{self.m}"

    @property
    def is_ensemble(self) -> bool:
        return self.kind in self.ENSEMBLES

    @property
    def average(self) -> str | None:
        """The averaged checkpoint it reads (`single` is the best member: the top-1 average); an
        ensemble of k members reads the members `warm_M<k>` averages."""
        if self.is_ensemble:
            return None if self.m is None else f"warm_M{self.m}"
        return "warm_M1" if self.kind == "single" else str(self)


@flax.struct.dataclass
class RewardFunction:
    params: Any                 # one tree (single) or trees stacked on a leading member axis
    shift: jax.Array
    scale: jax.Array
    model_cfg: ModelConfig = flax.struct.field(pytree_node=False)
    kind: str = flax.struct.field(pytree_node=False, default="single")
    uwo_lambda: float = flax.struct.field(pytree_node=False, default=1.0)
    name: str = flax.struct.field(pytree_node=False, default="rm")
    # 'vmap' batches members (accelerators); 'map' runs them in turn in one program (a CPU, where
    # batched matmuls are slower than M plain ones: bench ens_over_wa_scoring)
    ensemble_impl: str = flax.struct.field(pytree_node=False, default="vmap")
    # per-member standardisation before aggregating (M,), e.g. on SFT samples (Coste et al.
    # standardise each member before WCO / UWO: Bradley-Terry leaves each member's offset and
    # scale arbitrary); None leaves raw rewards
    member_shift: jax.Array = None
    member_scale: jax.Array = None

    @property
    def num_members(self) -> int:
        return 1 if self.kind == "single" else jax.tree.leaves(self.params)[0].shape[0]

    def member_rewards(self, tokens_BxT, mask_BxT) -> jax.Array:
        """Raw rewards, M x B (M = 1 for a single RM)."""
        rm = RewardModel(self.model_cfg)
        apply = lambda p: rm.apply({"params": p}, tokens_BxT, mask_BxT)  # noqa: E731
        if self.kind == "single":
            return apply(self.params)[None]
        if self.ensemble_impl == "map":
            return jax.lax.map(apply, self.params)
        return jax.vmap(apply)(self.params)

    def __call__(self, prompt_BxP, prompt_mask_BxP, response_BxR, response_mask_BxR) -> jax.Array:
        tokens = jnp.concatenate([prompt_BxP, response_BxR], 1)
        mask = jnp.concatenate([prompt_mask_BxP, response_mask_BxR.astype(prompt_mask_BxP.dtype)], 1)
        r_MxB = self.member_rewards(tokens, mask)
        if self.member_shift is not None:
            r_MxB = (r_MxB - self.member_shift[:, None]) / self.member_scale[:, None]
        return (aggregate(r_MxB, self.kind, self.uwo_lambda) - self.shift) / self.scale


def aggregate(r_MxB: jax.Array, kind: str, uwo_lambda: float = 1.0) -> jax.Array:
    if kind in ("single", "ens"):
        return r_MxB.mean(0)
    if kind == "wco":
        return r_MxB.min(0)
    if kind == "uwo":
        return r_MxB.mean(0) - uwo_lambda * r_MxB.var(0)
    raise ValueError(f"reward kind {kind!r}: allowed {KINDS}")


def make_reward_function(model_cfg: ModelConfig, params: Any | Sequence[Any], kind: str = "single",
                         *, uwo_lambda: float = 1.0, name: str | None = None,
                         ensemble_impl: str = "auto") -> RewardFunction:
    """`params`: one tree for 'single' (a member or a WARM average); a list of trees otherwise."""
    if kind not in KINDS:
        raise ValueError(f"reward kind {kind!r}: allowed {KINDS}")
    if ensemble_impl not in ("auto", "vmap", "map"):
        raise ValueError(f"ensemble_impl={ensemble_impl!r}: allowed ('auto', 'vmap', 'map')")
    ensemble_impl = platform_impl(ensemble_impl)
    if kind != "single":
        if not isinstance(params, (list, tuple)) or len(params) < 2:
            raise ValueError(f"reward kind {kind!r} needs a list of >= 2 members' parameters")
        params = jax.tree.map(lambda *xs: jnp.stack(xs), *params)
    return RewardFunction(params=params, shift=jnp.float32(0.0), scale=jnp.float32(1.0),
                          model_cfg=model_cfg, kind=kind, uwo_lambda=uwo_lambda,
                          name=name or kind, ensemble_impl=ensemble_impl)


# one jitted caller each (module level: jit caches per function object, so a caller made inside a
# function would compile again on every call)
score_call = jax.jit(lambda f, *a: f(*a))
member_call = jax.jit(lambda f, *a: f.member_rewards(
    jnp.concatenate([a[0], a[2]], 1), jnp.concatenate([a[1], a[3].astype(a[1].dtype)], 1)))


def standardised_members(fn: RewardFunction, prompt, prompt_mask, response, response_mask,
                         batch_size: int = 256) -> RewardFunction:
    """Each member z-scored on given samples (e.g. the SFT policy's) before aggregation."""
    if fn.kind == "single":
        return fn
    call = member_call
    r_MxB = np.concatenate([np.asarray(call(fn, prompt[i:i + batch_size],
                                            prompt_mask[i:i + batch_size],
                                            response[i:i + batch_size],
                                            response_mask[i:i + batch_size]))
                            for i in range(0, len(prompt), batch_size)], 1)
    if not np.isfinite(r_MxB).all():
        raise FloatingPointError(f"member standardisation of {fn.name!r}: non-finite rewards")
    return fn.replace(member_shift=jnp.asarray(r_MxB.mean(1), jnp.float32),
                      member_scale=jnp.asarray(np.maximum(r_MxB.std(1), 1e-6), jnp.float32))


def normalised(fn: RewardFunction, prompt, prompt_mask, response, response_mask,
               batch_size: int = 256) -> RewardFunction:
    """z-normalise `fn` on given samples (e.g. the SFT policy's): zero mean, unit std there."""
    raw = fn.replace(shift=jnp.float32(0.0), scale=jnp.float32(1.0))
    call = score_call
    r = np.concatenate([np.asarray(call(raw, prompt[i:i + batch_size],
                                        prompt_mask[i:i + batch_size],
                                        response[i:i + batch_size],
                                        response_mask[i:i + batch_size]))
                        for i in range(0, len(prompt), batch_size)])
    if not np.isfinite(r).all():
        raise FloatingPointError(f"reward normalisation of {fn.name!r}: {int((~np.isfinite(r)).sum())}"
                                 f" of {len(r)} rewards on the normalisation samples are not "
                                 "finite; the reward model is broken (check its checkpoint)")
    return fn.replace(shift=jnp.float32(r.mean()), scale=jnp.float32(max(r.std(), 1e-6)))


def describe(fn: RewardFunction) -> dict:
    return {"name": fn.name, "kind": fn.kind, "members": fn.num_members,
            "uwo_lambda": fn.uwo_lambda if fn.kind == "uwo" else None,
            "members_standardised": fn.member_shift is not None,
            "shift": float(fn.shift), "scale": float(fn.scale)}
