"""The reward-model stage: shared linear probe, then M diverse Bradley–Terry fine-tunings.

Layout under `<workdir>/rm/<name>/`:
  linear_probe/            head trained on the frozen final-SFT body (computed once, shared)
  train/population/ or train/member_<i>/    resumable training state
  members/member_<i>/      the exported member: {params} + meta (spec, base fingerprint, accuracies)
  eval.jsonl               per-member accuracy on every split
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax import sharding as shd
from warm_jax.checkpoint import Checkpointer, assign_with_fallback, restore_params
from warm_jax.data.pipeline import batch_iterator
from warm_jax.metrics import MetricsWriter
from warm_jax.models import ModelConfig, RewardModel
from warm_jax.rm.diversity import DiversityConfig, RunSpec, expand
from warm_jax.rm.loss import PAIR_KEYS, make_pair_scorer, make_rm_loss, split_accuracies
from warm_jax.rm.population import (StackedIterator, make_member_step, member_state,
                                    population_step, single_run_step, stack, unstack,
                                    with_member_axis)
from warm_jax.train import OptimConfig, create_train_state, fit, make_optimizer, state_from_params

SPLITS = ("train", "validation", "test")
MODES = ("population", "separate")


def _pairs(task, split: str) -> dict[str, np.ndarray]:
    data = task.preference_split(split)
    return {k: data[k] for k in PAIR_KEYS + ("flipped",)}


def _columns(split: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: split[k] for k in PAIR_KEYS}


def linear_probe(*, rm_dir: str, sft_dir: str, task, model_cfg: ModelConfig, num_steps: int,
                 learning_rate: float, batch_size: int, seed: int, mesh) -> tuple[dict, dict]:
    """Train only the reward head (freeze pattern `body/.*`) on the final SFT body."""
    rm = RewardModel(model_cfg)
    tx = make_optimizer(OptimConfig(learning_rate=learning_rate, frozen=(r"body/.*",)))
    dummy = jnp.ones((1, 4), jnp.int32)
    state, sh = create_train_state(lambda r: rm.init(r, dummy, jnp.ones_like(dummy))["params"], tx,
                                   mesh, jax.random.PRNGKey(seed))
    ck = Checkpointer(os.path.join(rm_dir, "linear_probe"), max_to_keep=1)
    sft_params, sft_meta = restore_params(sft_dir)
    if ck.latest_step() is None:
        params, fresh = assign_with_fallback(sft_params, state.params)
        assert all(f.startswith("reward_head/") for f in fresh), fresh
        state = state_from_params(params, tx, sh, state.rng)
    meta = {"base_fingerprint": sft_meta.get("base_fingerprint"), "sft_step": sft_meta.get("step")}
    with MetricsWriter(os.path.join(rm_dir, "linear_probe"), "train") as w, shd.activate(mesh):
        loss = make_rm_loss(rm)
        state = fit(state=state, state_shardings=sh, mesh=mesh,
                    train_step=single_run_step(make_member_step(loss, tx), 0.0),
                    data_iter=batch_iterator(_columns(_pairs(task, "train")), batch_size=batch_size,
                                             seed=seed),
                    num_steps=num_steps, checkpointer=ck, writer=w, meta=meta,
                    ckpt_every=num_steps, desc="linear probe")
    return jax.device_get(state.params), meta


def member_init(probe_params: dict, sft_dir: str, spec: RunSpec) -> dict:
    """Body from the member's SFT checkpoint (Baklava), head from the shared linear probe."""
    body, _ = restore_params(sft_dir, spec.init_step)
    params, fresh = assign_with_fallback(body, probe_params)
    assert fresh == ["reward_head/kernel"], fresh
    return params


def train_reward_models(*, workdir: str, task, model_cfg: ModelConfig, name: str = "rm",
                        mode: str = "population", population_impl: str = "vmap",
                        members: Sequence[int] | None = None,
                        diversity: DiversityConfig = DiversityConfig(), num_steps: int = 300,
                        batch_size: int = 32, probe_steps: int = 100,
                        probe_learning_rate: float = 3e-3,
                        mesh_shape: Mapping[str, int] | None = None, seed: int = 0,
                        ckpt_every: int = 100, eval_batch_size: int = 256,
                        max_eval_pairs: int | None = None) -> str:
    """Train the M members (all, or `members` only: one gin launch per member in separate mode).

    `population_impl`: 'vmap' (accelerators) or 'map' (a CPU; see `population_step`)."""
    if mode not in MODES:
        raise ValueError(f"train_reward_models.mode={mode!r}: allowed {MODES}")
    rm_dir = os.path.join(workdir, "rm", name)
    sft_dir = os.path.join(workdir, "sft", "checkpoints")
    sft_ck = Checkpointer(sft_dir, read_only=True)
    specs = expand(diversity, sft_ck.latest_step())
    missing = sorted({s.init_step for s in specs} - set(sft_ck.all_steps()))
    if missing:
        raise ValueError(f"DiversityConfig.baklava_steps {missing} are not SFT checkpoints "
                         f"(have {sft_ck.all_steps()})")
    chosen = specs if members is None else [specs[i] for i in members]
    if all(member_done(rm_dir, s.member) for s in chosen):
        return rm_dir
    mesh = shd.make_mesh(**(mesh_shape or {"data": -1}))
    probe_params, meta = linear_probe(rm_dir=rm_dir, sft_dir=sft_dir, task=task,
                                      model_cfg=model_cfg, num_steps=probe_steps,
                                      learning_rate=probe_learning_rate, batch_size=batch_size,
                                      seed=seed, mesh=mesh)
    rm = RewardModel(model_cfg)
    loss = make_rm_loss(rm)
    tx = make_optimizer(OptimConfig(learning_rate=1.0))  # each member's lr is set in its state
    dummy = jnp.ones((1, 4), jnp.int32)
    _, sh1 = create_train_state(lambda r: rm.init(r, dummy, jnp.ones_like(dummy))["params"], tx,
                                mesh, jax.random.PRNGKey(0))
    train_cols = _columns(_pairs(task, "train"))
    step = make_member_step(loss, tx)
    trained: dict[int, dict] = {}
    groups = [chosen] if mode == "population" else [[s] for s in chosen]
    for group in groups:
        todo = [s for s in group if not member_done(rm_dir, s.member)]
        if not todo:
            continue
        iters = [batch_iterator(train_cols, batch_size=batch_size, seed=s.data_seed) for s in todo]
        states = [member_state(member_init(probe_params, sft_dir, s), tx, s.learning_rate,
                               s.rng_seed) for s in todo]
        if mode == "population":
            sh = with_member_axis(sh1, mesh)
            state, data_iter, leading = jax.device_put(stack(states), sh), StackedIterator(iters), \
                ("member", "batch")
            train_step = population_step(step, [s.dropout for s in todo], population_impl)
            sub = "population"
        else:
            sh, leading = sh1, ("batch",)
            state, data_iter = jax.device_put(states[0], sh), iters[0]
            train_step, sub = single_run_step(step, todo[0].dropout), f"member_{todo[0].member}"
        run_dir = os.path.join(rm_dir, "train", sub)
        with MetricsWriter(run_dir, "train") as w, shd.activate(mesh):
            state = fit(state=state, state_shardings=sh, train_step=train_step, mesh=mesh,
                        data_iter=data_iter, num_steps=num_steps,
                        checkpointer=Checkpointer(os.path.join(run_dir, "checkpoints")), writer=w,
                        meta={"specs": [s.as_dict() for s in todo], **meta},
                        ckpt_every=ckpt_every, leading=leading, desc=f"rm {name} {sub}")
        params = jax.device_get(state.params)
        for i, s in enumerate(todo):
            trained[s.member] = unstack(params, i) if mode == "population" else params
    rows = evaluate_members(rm, task, trained, eval_batch_size, max_eval_pairs)
    for s in chosen:
        if s.member in trained:
            export_member(rm_dir, s, trained[s.member], dict(meta, accuracy=rows[s.member],
                                                              num_steps=num_steps))
    write_eval_table(rm_dir, len(specs))
    return rm_dir


def write_eval_table(rm_dir: str, num_members: int) -> None:
    """eval.jsonl: one row per exported member (spec + per-split accuracy), written whole."""
    with MetricsWriter(rm_dir, "eval_tmp", tensorboard=False) as w:
        for m in range(num_members):
            if member_done(rm_dir, m):
                meta = Checkpointer(_member_dir(rm_dir, m), read_only=True).restore_meta()
                w.write(meta["num_steps"], {"member": m, **meta["spec"], **meta["accuracy"]})
    os.replace(w.path, os.path.join(rm_dir, "eval.jsonl"))


def evaluate_members(rm: RewardModel, task, params_by_member: Mapping[int, dict],
                     batch_size: int = 256, max_pairs: int | None = None) -> dict[int, dict]:
    """Per-member accuracy on every split (the first `max_pairs` pairs of each, if set)."""
    score = make_pair_scorer(rm, batch_size)
    splits = {s: {k: v[:max_pairs] for k, v in _pairs(task, s).items()} for s in SPLITS}
    out = {}
    for m, params in params_by_member.items():
        acc = {}
        for s, data in splits.items():
            rc, rr = score(params, data)
            acc.update(split_accuracies(rc, rr, s, data["flipped"] if s == "train" else None))
        out[m] = acc
    return out


def _member_dir(rm_dir: str, member: int) -> str:
    return os.path.join(rm_dir, "members", f"member_{member}")


def export_member(rm_dir: str, spec: RunSpec, params: dict, meta: dict) -> str:
    """One orbax checkpoint per member, the same layout whichever mode trained it."""
    d = _member_dir(rm_dir, spec.member)
    ck = Checkpointer(d, max_to_keep=1)
    ck.save(int(meta.get("num_steps", 0)), {"params": params}, dict(meta, spec=spec.as_dict()))
    return d


def load_member(rm_dir: str, member: int) -> tuple[dict, dict]:
    return restore_params(_member_dir(rm_dir, member))


def member_done(rm_dir: str, member: int) -> bool:
    d = _member_dir(rm_dir, member)
    return os.path.isdir(d) and Checkpointer(d, read_only=True).latest_step() is not None
