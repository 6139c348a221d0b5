"""The reward-model stage: shared linear probe, then M diverse Bradley–Terry fine-tunings (or, for
the paper's ablation, `probe=False`: each member from a fresh random head of its own).

Layout under `<workdir>/rm/<name>/` (paths from `warm_jax.layout.RunLayout`):
  linear_probe/            head trained on the frozen final-SFT body (computed once, shared)
  train/population/ or train/member_<i>/    resumable training state
  members/member_<i>/      the exported member: {params} + meta (spec, base fingerprint, accuracies)
  eval.jsonl               per-member accuracy on every split
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax import checks
from warm_jax import sharding as shd
from warm_jax.checks import run_only
from warm_jax.checkpoint import Checkpointer, assign_with_fallback, restore_params
from warm_jax.data.pipeline import batch_iterator
from warm_jax.data.task import chain_seed, seeded_task
from warm_jax.fileio import kill_point, write_jsonl
from warm_jax.layout import RunLayout, chain
from warm_jax.metrics import MetricsWriter
from warm_jax.models import ModelConfig, RewardModel, unbox
from warm_jax.ood import splits_of, with_ood
from warm_jax.rm.diversity import DiversityConfig, RunSpec, expand
from warm_jax.rm.loss import (PAIR_KEYS, make_pair_scorer, make_rm_loss, split_accuracies,
                              task_reward_model)
from warm_jax.rm.population import (POPULATION_IMPLS, StackedIterator, make_member_step, member_state,
                                    population_step, single_run_step, stack, unstack,
                                    with_member_axis)
from warm_jax.train import OptimConfig, create_train_state, fit, make_optimizer, state_from_params

MODES = ("population", "separate")


def _pairs(task, split: str) -> dict[str, np.ndarray]:
    data = task.preference_split(split)
    return {k: data[k] for k in PAIR_KEYS + ("flipped",) if k in data}


def _columns(split: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: split[k] for k in PAIR_KEYS if k in split}


def sft_meta(sft_dir: str) -> dict:
    """What every member records of its SFT base."""
    meta = Checkpointer(sft_dir, read_only=True).restore_meta()
    if meta.get("base_fingerprint") is None:
        raise ValueError(f"{sft_dir} records no base fingerprint: reward models from it could not "
                         "be checked for a shared initialisation")
    return {"base_fingerprint": meta["base_fingerprint"], "sft_step": meta.get("step")}


def linear_probe(*, probe_dir: str, sft_dir: str, task, model_cfg: ModelConfig, num_steps: int,
                 learning_rate: float, batch_size: int, seed: int, mesh) -> tuple[dict, dict]:
    """Train only the reward head (freeze pattern `body/.*`) on the final SFT body."""
    rm = task_reward_model(task, model_cfg)
    tx = make_optimizer(OptimConfig(learning_rate=learning_rate, frozen=(r"body/.*",)))
    state, sh = create_train_state(lambda r: rm.init(r, *rm.dummy_inputs())["params"], tx,
                                   mesh, jax.random.PRNGKey(seed))
    ck = Checkpointer(probe_dir, max_to_keep=1)
    meta = sft_meta(sft_dir)
    if ck.latest_step() is None:
        params, fresh = assign_with_fallback(restore_params(sft_dir)[0], state.params)
        assert all(f.startswith("reward_head/") for f in fresh), fresh
        state = state_from_params(params, tx, sh, state.rng)
    with MetricsWriter(probe_dir, "train") as w, shd.activate(mesh):
        loss = make_rm_loss(rm)
        state = fit(state=state, state_shardings=sh, mesh=mesh,
                    train_step=single_run_step(make_member_step(loss, tx), 0.0),
                    data_iter=batch_iterator(_columns(_pairs(task, "train")), batch_size=batch_size,
                                             seed=seed),
                    num_steps=num_steps, checkpointer=ck, writer=w, meta=meta,
                    ckpt_every=num_steps, desc="linear probe")
    return jax.device_get(state.params), meta


def fresh_head_params(rm: RewardModel, rng_seed: int) -> dict:
    """A whole RewardModel init whose reward head is drawn from the member's own key (the probe
    ablation's init; `member_init` then puts the SFT body on it)."""
    key = jax.random.fold_in(jax.random.PRNGKey(rng_seed), 0x4EAD)
    return jax.device_get(unbox(rm.init(key, *rm.dummy_inputs())["params"]))


def member_init(probe_params: dict, sft_dir: str, spec: RunSpec,
                bodies: dict | None = None) -> dict:
    """Body from the member's SFT checkpoint (Baklava), head from `probe_params` (the shared linear
    probe, or the member's own fresh head). `bodies` caches the restored SFT checkpoints by step:
    a population restores each of its few Baklava bodies once, not once per member."""
    bodies = {} if bodies is None else bodies
    if spec.init_step not in bodies:
        # on the host: a donated member state must never own the cached buffers
        bodies[spec.init_step] = jax.device_get(restore_params(sft_dir, spec.init_step)[0])
    params, fresh = assign_with_fallback(bodies[spec.init_step], probe_params)
    assert fresh == ["reward_head/kernel"], fresh
    return params


@dataclasses.dataclass(frozen=True)
class RMConfig:
    """The reward-model stage. `seeds`: the chain seeds, each with its own training-label draw
    (`task.for_seed(s)`), linear probe, data orders and dropout keys. `members`: train only these
    (one launch per member in separate mode). `population_impl`: 'vmap' (accelerators) or 'map'
    (a CPU; see `population_step`). `ood_pairs`: also evaluate the members on the sampled OOD
    split (`warm_jax.ood`). `probe=False` (the paper's ablation): no linear probe; each member
    starts from a fresh random head of its own (drawn from its `rng_seed`) on its SFT body."""
    name: str = "rm"
    seeds: Sequence[int] = (0,)
    diversity: DiversityConfig = DiversityConfig()
    num_steps: int = 300
    batch_size: int = 32
    probe_steps: int = 100
    probe_learning_rate: float = 3e-3
    seed: int = 0
    max_eval_pairs: int | None = None
    ood_pairs: bool = False
    probe: bool = True
    # how members are batched (mode, impl, which launch) does not change what they compute
    mode: str = run_only("population")
    population_impl: str = run_only("vmap")
    members: Sequence[int] | None = run_only(None)
    mesh_shape: Mapping[str, int] | None = run_only(None)
    ckpt_every: int = run_only(100)
    eval_batch_size: int = run_only(256)

    def __post_init__(self):
        checks.one_of(self, "mode", MODES)
        checks.one_of(self, "population_impl", POPULATION_IMPLS)
        checks.seeds(self, "seeds")
        if self.members is not None:
            checks.seeds(self, "members")
        checks.integers(self, 1, "num_steps", "batch_size", "probe_steps", "ckpt_every",
                        "eval_batch_size")
        checks.integers(self, 0, "seed")
        checks.optional_integer(self, 1, "max_eval_pairs")
        checks.at_least(self, 0.0, "probe_learning_rate")


def train_reward_models(*, workdir: str, task, model_cfg: ModelConfig, cfg: RMConfig) -> str:
    """Train the M members of every chain seed (`rm/<name>/seed_<s>/`; all members or
    `cfg.members`); in population mode the S x M members are ONE program over the member axis."""
    name, diversity, seeds, seed, members = cfg.name, cfg.diversity, cfg.seeds, cfg.seed, \
        cfg.members
    layout = RunLayout(workdir)
    if cfg.ood_pairs and task.input_layer:
        checks.fail(cfg, "ood_pairs", "False where the task serves trunk states (the sampled OOD "
                    "pairs are tokens)")
    if cfg.ood_pairs:
        task = with_ood(task, layout.ood_pairs)
    rm_dir = layout.rm(name)
    sft_dir = layout.checkpoints(layout.sft)
    sft_ck = Checkpointer(sft_dir, read_only=True)
    chains = {chain(name, s): (seeded_task(task, s),
                               expand(dataclasses.replace(diversity,
                                                          seed=chain_seed(diversity.seed, s)),
                                      sft_ck.latest_step()), chain_seed(seed, s))
              for s in seeds}
    specs0 = next(iter(chains.values()))[1]
    missing = sorted({s.init_step for s in specs0} - set(sft_ck.all_steps()))
    if missing:
        raise ValueError(f"DiversityConfig.baklava_steps {missing} are not SFT checkpoints "
                         f"(have {sft_ck.all_steps()})")
    if task.input_layer and {s.init_step for s in specs0} != {sft_ck.latest_step()}:
        raise ValueError("DiversityConfig.baklava_steps: trunk states come from the last base "
                         f"checkpoint ({sft_ck.latest_step()}), so every member must start there")
    chosen = [(c, sp) for c, (_, specs, _) in chains.items() for sp in specs
              if members is None or sp.member in members]
    if cfg.mode == "population":
        groups, runs = [chosen], [layout.rm_train(name, "population")]
    else:
        groups = [[item] for item in chosen]
        runs = [layout.rm_train(c, f"member_{sp.member}") for c, sp in chosen]
    config = dict(task=task, model_cfg=model_cfg, **checks.recorded(cfg, drop=("name",)))
    outputs = [layout.member(c, sp.member) for c, sp in chosen] + runs
    with layout.stage(f"rm {name}", rm_dir, config, outputs=outputs):
        if not all(layout.member_done(c, sp.member) for c, sp in chosen):
            _train_and_export(layout, task, model_cfg, chains, groups, runs, cfg)
        for c, (_, specs, _) in chains.items():
            with layout.lock(RunLayout.eval_rows(layout.rm(c)), wait=True):
                write_eval_table(layout, c, len(specs))
    return rm_dir


def _train_and_export(layout: RunLayout, task, model_cfg: ModelConfig, chains, groups, runs,
                      cfg: RMConfig) -> None:
    population_impl, num_steps, batch_size, probe = (cfg.population_impl, cfg.num_steps,
                                                     cfg.batch_size, cfg.probe)
    sft_dir = layout.checkpoints(layout.sft)
    mesh = shd.make_mesh(**(cfg.mesh_shape or {"data": -1}))
    probes, metas, train_cols = {}, {}, {}
    for c, (task_c, _, seed_c) in chains.items():
        train_cols[c] = _columns(_pairs(task_c, "train"))
        if not probe:
            metas[c] = sft_meta(sft_dir)
            continue
        # shared by side-by-side launches of single members: the second waits, then finds it done
        with layout.lock(layout.linear_probe(c), wait=True):
            probes[c], metas[c] = linear_probe(
                probe_dir=layout.linear_probe(c), sft_dir=sft_dir, task=task_c,
                model_cfg=model_cfg, num_steps=cfg.probe_steps,
                learning_rate=cfg.probe_learning_rate,
                batch_size=batch_size, seed=seed_c, mesh=mesh)
    meta = next(iter(metas.values()))
    rm = task_reward_model(task, model_cfg)
    loss = make_rm_loss(rm)
    tx = make_optimizer(OptimConfig(learning_rate=1.0))  # each member's lr is set in its state
    _, sh1 = create_train_state(lambda r: rm.init(r, *rm.dummy_inputs())["params"], tx,
                                mesh, jax.random.PRNGKey(0))
    step = make_member_step(loss, tx)
    trained: dict[str, dict[int, dict]] = {c: {} for c in chains}
    bodies: dict = {}
    for group, run_dir in zip(groups, runs):
        if all(layout.member_done(c, s.member) for c, s in group):
            continue
        # the whole group, even if a kill came mid-export: its checkpoint holds every member
        iters = [batch_iterator(train_cols[c], batch_size=batch_size, seed=s.data_seed)
                 for c, s in group]
        heads = [probes[c] if probe else fresh_head_params(rm, s.rng_seed)
                 for c, s in group]
        states = [member_state(member_init(h, sft_dir, s, bodies), tx, s.learning_rate,
                               s.rng_seed) for h, (c, s) in zip(heads, group)]
        if len(runs) == 1 and run_dir.endswith("population"):
            sh = with_member_axis(sh1, mesh)
            state, data_iter, leading = shd.place(stack(states), sh), StackedIterator(iters), \
                ("member", "batch")
            train_step = population_step(step, [s.dropout for _, s in group], population_impl)
            stacked = True
        else:
            sh, leading = sh1, ("batch",)
            state, data_iter = shd.place(states[0], sh), iters[0]
            train_step = single_run_step(step, group[0][1].dropout)
            stacked = False
        with MetricsWriter(run_dir, "train") as w, shd.activate(mesh):
            state = fit(state=state, state_shardings=sh, train_step=train_step, mesh=mesh,
                        data_iter=data_iter, num_steps=num_steps,
                        checkpointer=Checkpointer(layout.checkpoints(run_dir)), writer=w,
                        meta={"specs": [dict(s.as_dict(), chain=c) for c, s in group], **meta},
                        ckpt_every=cfg.ckpt_every, leading=leading,
                        desc=f"rm {os.path.relpath(run_dir, layout.path('rm'))}")
        params = jax.device_get(state.params)
        for i, (c, s) in enumerate(group):
            if not layout.member_done(c, s.member):
                trained[c][s.member] = unstack(params, i) if stacked else params
    for c, (task_c, specs, _) in chains.items():
        if not trained[c]:
            continue
        rows = evaluate_members(rm, task_c, trained[c], cfg.eval_batch_size, cfg.max_eval_pairs)
        for m in sorted(trained[c]):
            kill_point("rm.export")
            export_member(layout.member(c, m), specs[m], trained[c][m],
                          dict(metas[c], accuracy=rows[m], num_steps=num_steps, probe=probe))


def write_eval_table(layout: RunLayout, name: str, num_members: int) -> None:
    """eval.jsonl: one row per exported member (spec + per-split accuracy), written whole; kept
    if it already lists exactly the exported members."""
    path = RunLayout.eval_rows(layout.rm(name))
    done = [m for m in range(num_members) if layout.member_done(name, m)]
    if os.path.exists(path):
        from warm_jax.metrics import read_jsonl
        if [r["member"] for r in read_jsonl(path)] == done:
            return
    rows = []
    for m in done:
        meta = Checkpointer(layout.member(name, m), read_only=True).restore_meta()
        rows.append({"step": meta["num_steps"], "member": m, **meta["spec"], **meta["accuracy"]})
    write_jsonl(path, rows)


def evaluate_members(rm: RewardModel, task, params_by_member: Mapping[int, dict],
                     batch_size: int = 256, max_pairs: int | None = None) -> dict[int, dict]:
    """Per-member accuracy on every split (the first `max_pairs` pairs of each, if set)."""
    score = make_pair_scorer(rm, batch_size)
    splits = {s: {k: v[:max_pairs] for k, v in _pairs(task, s).items()}
              for s in splits_of(task)}
    out = {}
    for m, params in params_by_member.items():
        acc = {}
        for s, data in splits.items():
            rc, rr = score(params, data)
            acc.update(split_accuracies(rc, rr, s, data["flipped"] if s == "train" else None))
        out[m] = acc
    return out


def export_member(member_dir: str, spec: RunSpec, params: dict, meta: dict) -> str:
    """One orbax checkpoint per member, the same layout whichever mode trained it."""
    ck = Checkpointer(member_dir, max_to_keep=1)
    ck.save(int(meta.get("num_steps", 0)), {"params": params}, dict(meta, spec=spec.as_dict()))
    return member_dir
