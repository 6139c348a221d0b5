"""WARP's weight operations (Ramé et al. 2024, arXiv 2406.16768; `docs/method.md`, "WARP"), as pure
functions over parameter pytrees:

- `ema_update`: the EMA anchor, θ_ema ← (1 − μ)·θ_ema + μ·θ, which replaces the SFT policy in the
  KL term of each policy's RL;
- `slerp` / `slerp_many`: spherical interpolation of task vectors δ_m = θ_m − θ_init, per parameter
  tensor, iterated for M > 2 with λ = 1/m for the m-th vector; `lerp` (plain averaging) is the
  baseline;
- `liti`: interpolation towards the init, θ_η = (1 − η)·θ_init + η·θ_merged; sweeping η traces a
  KL–reward front, and η = 0.3 gives the next iteration's init.

Every function maps over leaves with `jax.tree.map`, so it runs under `jit` and on sharded arrays
as they are. `make_warp_rl` is the project's REINFORCE with the EMA anchor; the `warp` stage, its
claims and the 2×2 with WARM build on these.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp

from warm_jax.rl.reinforce import RLState, make_rl

# below this sin Ω (or norm) two task vectors count as collinear (or zero): SLERP's weights
# sin((1−λ)Ω)/sin Ω and sin(λΩ)/sin Ω are 0/0 there, and linear interpolation is their limit
COLLINEAR_EPS = 1e-6


def ema_update(ema: Any, params: Any, mu: float) -> Any:
    """θ_ema ← (1 − μ)·θ_ema + μ·θ, leaf by leaf, in the EMA's dtype."""
    return jax.tree.map(lambda e, p: ((1 - mu) * e + mu * p).astype(e.dtype), ema, params)


def task_vector(params: Any, init: Any) -> Any:
    """δ = θ − θ_init."""
    return jax.tree.map(jnp.subtract, params, init)


def lerp(delta_a: Any, delta_b: Any, lam) -> Any:
    """(1 − λ)·δ_a + λ·δ_b."""
    return jax.tree.map(lambda a, b: (1 - lam) * a + lam * b, delta_a, delta_b)


def _slerp_leaf(a: jax.Array, b: jax.Array, lam) -> jax.Array:
    a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
    na, nb = jnp.linalg.norm(a32), jnp.linalg.norm(b32)
    cos = jnp.clip(jnp.vdot(a32, b32) / jnp.maximum(na * nb, 1e-30), -1.0, 1.0)
    omega = jnp.arccos(cos)
    sin = jnp.sin(omega)
    degenerate = (sin < COLLINEAR_EPS) | (na < COLLINEAR_EPS) | (nb < COLLINEAR_EPS)
    safe_sin = jnp.where(degenerate, 1.0, sin)   # no 0/0 in the branch `where` discards
    wa = jnp.where(degenerate, 1 - lam, jnp.sin((1 - lam) * omega) / safe_sin)
    wb = jnp.where(degenerate, lam, jnp.sin(lam * omega) / safe_sin)
    return (wa * a32 + wb * b32).astype(a.dtype)


def slerp(delta_a: Any, delta_b: Any, lam) -> Any:
    """Per parameter tensor: sin((1−λ)Ω)/sin Ω · δ_a + sin(λΩ)/sin Ω · δ_b, Ω the angle between
    δ_a and δ_b; linear interpolation where they are collinear or one is zero (no NaN)."""
    return jax.tree.map(lambda a, b: _slerp_leaf(a, b, lam), delta_a, delta_b)


def slerp_many(deltas: Sequence[Any]) -> Any:
    """SLERP of M task vectors, iterated as WARP does: the merge of the first m − 1 with the m-th
    at λ = 1/m. With LERP this rule is the plain average; on the sphere it moves the fraction 1/m
    of the angle, so later vectors weigh slightly more than in a symmetric merge."""
    if not deltas:
        raise ValueError("slerp_many: no task vectors")
    merged = deltas[0]
    for m, delta in enumerate(deltas[1:], start=2):
        merged = slerp(merged, delta, 1.0 / m)
    return merged


def liti(init: Any, merged: Any, eta) -> Any:
    """θ_η = (1 − η)·θ_init + η·θ_merged: η = 0 is the init, η = 1 the merge."""
    return jax.tree.map(lambda i, m: ((1 - eta) * i + eta * m).astype(i.dtype), init, merged)


def merge_policies(policies: Sequence[Any], init: Any, *, how: str = "slerp") -> Any:
    """θ_init + the SLERP (or LERP: the plain average) of the policies' task vectors."""
    if how not in ("slerp", "lerp"):
        raise ValueError(f"merge_policies: how={how!r}; allowed 'slerp', 'lerp'")
    deltas = [task_vector(p, init) for p in policies]
    if how == "slerp":
        merged = slerp_many(deltas)
    else:
        merged = jax.tree.map(lambda *d: sum(d) / len(d), *deltas)
    return jax.tree.map(lambda i, d: (i + d).astype(i.dtype), init, merged)


@flax.struct.dataclass
class WarpState:
    rl: RLState
    ema: Any       # the anchor: an EMA of the policy, from the policy's init
    mu: jax.Array  # the EMA rate, in the state like α: runs of several μ share one program


def make_warp_rl(*, mu: float = 0.01, **make_rl_kw):
    """`make_rl` with WARP's EMA anchor: each step's KL is taken to the EMA of the policy's own
    weights (so the logged `kl` is KL to the EMA), which then moves μ of the way to the updated
    policy. Returns (init_state(policy, value, seed, alpha[, mu]), step(state[, reward_fn])), so
    `run_chunk` and vmap over seeds, α and μ work as for plain RL. `make_rl_kw["ref_params"]` is
    not used by the steps (the EMA replaces it); pass the init."""
    _check_mu(mu)
    init_rl, step_rl = make_rl(**make_rl_kw)

    def init_state(policy, value, seed, alpha, mu: float = mu) -> WarpState:
        _check_mu(mu)
        return WarpState(rl=init_rl(policy, value, seed, alpha), ema=policy, mu=jnp.float32(mu))

    def step(state: WarpState, reward_fn: Any = None):
        rl, metrics = step_rl(state.rl, reward_fn, anchor=state.ema)
        return WarpState(rl=rl, ema=ema_update(state.ema, rl.policy, state.mu), mu=state.mu), metrics

    return init_state, step


def _check_mu(mu) -> None:
    if not 0.0 <= float(mu) <= 1.0:
        raise ValueError(f"WARP's EMA rate mu={mu} out of range [0, 1]")
