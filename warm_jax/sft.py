"""Stages that make the shared initialisation: pretraining, then SFT with a trajectory of checkpoints.

The SFT trajectory's checkpoints are WARM's "Baklava" inits (reward models fine-tuned from different
checkpoints of one SFT run). Each stage writes `<workdir>/<stage>/checkpoints` and metrics JSONL and
resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax import checks
from warm_jax import sharding as shd
from warm_jax.checks import run_only
from warm_jax.checkpoint import Checkpointer, fingerprint, restore_params
from warm_jax.data.pipeline import batch_iterator
from warm_jax.fileio import write_jsonl
from warm_jax.layout import RunLayout
from warm_jax.losses import make_lm_loss, response_logprobs
from warm_jax.metrics import MetricsWriter
from warm_jax.models import LanguageModel, ModelConfig, SamplingConfig, make_sampler
from warm_jax.train import (OptimConfig, create_train_state, fit, make_optimizer, make_train_step,
                            state_from_params)

DEFAULT_MESH = {"data": -1}


def train_lm(*, stage_dir: str, data: Mapping[str, np.ndarray], model_cfg: ModelConfig,
             optim: OptimConfig, num_steps: int, batch_size: int, seed: int,
             mesh_shape: Mapping[str, int] | None = None, init_from: str | None = None,
             dropout_rate: float = 0.0, ckpt_every: int = 100, keep_steps: Sequence[int] = (),
             max_to_keep: int | None = 2, extra_meta: Mapping[str, Any] | None = None,
             final_meta=None, save_meta=None, allow_missing_fingerprint: bool = False):
    """Next-token training on `data` (tokens, mask, loss_mask); returns (params, meta).
    Started from `init_from`, every checkpoint (fresh or resumed) records that base's fingerprint."""
    mesh = shd.make_mesh(**(mesh_shape or DEFAULT_MESH))
    lm = LanguageModel(model_cfg)
    tx = make_optimizer(optim)
    dummy = jnp.ones((1, 4), jnp.int32)
    state, shardings = create_train_state(lambda r: lm.init(r, dummy)["params"], tx, mesh,
                                          jax.random.PRNGKey(seed))
    ck = Checkpointer(os.path.join(stage_dir, "checkpoints"), max_to_keep=max_to_keep)
    meta = dict(extra_meta or {})
    if init_from is not None:
        src_meta = Checkpointer(init_from, read_only=True).restore_meta()
        meta["base_fingerprint"] = base_fingerprint_of(src_meta, init_from,
                                                       allow_missing_fingerprint)
        if ck.latest_step() is None:
            params, _ = restore_params(init_from, shardings=shardings.params)
            state = state_from_params(params, tx, shardings, state.rng)
    with MetricsWriter(stage_dir, "train") as writer, shd.activate(mesh):
        state = fit(state=state, state_shardings=shardings,
                    train_step=make_train_step(make_lm_loss(lm, dropout_rate), tx), mesh=mesh,
                    data_iter=batch_iterator(data, batch_size=batch_size, seed=seed),
                    num_steps=num_steps, checkpointer=ck, writer=writer, meta=meta,
                    ckpt_every=ckpt_every, keep_steps=keep_steps, final_meta=final_meta,
                    save_meta=save_meta, desc=os.path.basename(stage_dir))
    return state.params, ck.restore_meta()


def base_fingerprint_of(meta: Mapping[str, Any], where: str, allow_missing: bool = False) -> str | None:
    """The base fingerprint a checkpoint records; its absence is an error unless overridden."""
    fp = meta.get("base_fingerprint")
    if fp is None:
        msg = (f"{where} records no base fingerprint, so nothing downstream could check that its "
               "descendants share one initialisation")
        if not allow_missing:
            raise ValueError(msg + " (allow_missing_fingerprint=True overrides)")
        logging.warning("!!! %s — going on because allow_missing_fingerprint=True !!!", msg)
    return fp


def _done(stage_dir: str, num_steps: int) -> bool:
    d = RunLayout.checkpoints(stage_dir)
    return os.path.isdir(d) and Checkpointer(d, read_only=True).latest_step() == num_steps


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """The pretraining stage: next-token training on the task's corpus."""
    optim: OptimConfig = OptimConfig()
    num_steps: int = 1000
    batch_size: int = 64
    seed: int = 0
    mesh_shape: Mapping[str, int] | None = run_only(None)
    ckpt_every: int = run_only(250)

    def __post_init__(self):
        checks.integers(self, 1, "num_steps", "batch_size", "ckpt_every")
        checks.integers(self, 0, "seed")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """The SFT stage. `trajectory`: the steps kept (the Baklava inits). `min_gold_reward` (tasks
    with an oracle): the declared floor for the SFT policy's gold reward at its last step; below it
    the stage fails with `SFTQualityError`, as every later stage would study an unconverged policy
    (the checkpoints and eval.jsonl are kept, so a rerun with another floor does not retrain)."""
    optim: OptimConfig = OptimConfig()
    num_steps: int = 600
    batch_size: int = 64
    seed: int = 0
    trajectory: Sequence[int] = (400, 500, 600)
    eval_samples: int = 256
    sampling: SamplingConfig | None = None
    mesh_shape: Mapping[str, int] | None = run_only(None)
    allow_missing_fingerprint: bool = run_only(False)
    min_gold_reward: float | None = run_only(None)

    def __post_init__(self):
        checks.integers(self, 1, "num_steps", "batch_size", "eval_samples")
        checks.integers(self, 0, "seed")
        checks.seeds(self, "trajectory")   # distinct integers, stored as a tuple
        if min(self.trajectory) < 1 or max(self.trajectory) > self.num_steps:
            checks.fail(self, "trajectory", f"steps in [1, num_steps={self.num_steps}]")


def pretrain(*, workdir: str, task, model_cfg: ModelConfig, cfg: PretrainConfig) -> str:
    """Next-token pretraining on the task's corpus; the result is the pretrained base whose
    fingerprint every descendant records (every pretraining checkpoint is a base of its own)."""
    layout = RunLayout(workdir)
    stage_dir = layout.pretrain
    _check_vocab(task, model_cfg)
    with layout.stage("pretrain", stage_dir, dict(task=task, model_cfg=model_cfg,
                                                  **checks.recorded(cfg))):
        if not _done(stage_dir, cfg.num_steps):
            train_lm(stage_dir=stage_dir, data=task.pretrain_corpus(), model_cfg=model_cfg,
                     optim=cfg.optim, num_steps=cfg.num_steps, batch_size=cfg.batch_size,
                     seed=cfg.seed, mesh_shape=cfg.mesh_shape, ckpt_every=cfg.ckpt_every,
                     save_meta=lambda st: {"base_fingerprint": fingerprint(st.params)})
    return layout.checkpoints(stage_dir)


def sft(*, workdir: str, task, model_cfg: ModelConfig, cfg: SFTConfig) -> str:
    """Fine-tune the pretrained base on demonstrations, keeping every `cfg.trajectory`
    checkpoint, and log gold reward and KL-to-base of samples at each of them (`sft/eval.jsonl`);
    then check `cfg.min_gold_reward`."""
    layout = RunLayout(workdir)
    stage_dir = layout.sft
    base_dir = layout.checkpoints(layout.pretrain)
    with layout.stage("sft", stage_dir, dict(task=task, model_cfg=model_cfg,
                                             **checks.recorded(cfg))):
        if not _done(stage_dir, cfg.num_steps):
            train_lm(stage_dir=stage_dir, data=task.sft_demonstrations(), model_cfg=model_cfg,
                     optim=cfg.optim, num_steps=cfg.num_steps, batch_size=cfg.batch_size,
                     seed=cfg.seed, mesh_shape=cfg.mesh_shape, init_from=base_dir,
                     ckpt_every=cfg.num_steps, keep_steps=cfg.trajectory, max_to_keep=None,
                     allow_missing_fingerprint=cfg.allow_missing_fingerprint)
        _sft_eval(stage_dir, base_dir, task, model_cfg, cfg.eval_samples, cfg.seed, cfg.sampling)
    if cfg.min_gold_reward is not None:
        check_sft_floor(stage_dir, layout.pretrain, cfg.min_gold_reward)
    return layout.checkpoints(stage_dir)


class SFTQualityError(RuntimeError):
    """The SFT policy missed its declared gold-reward floor."""


def check_sft_floor(stage_dir: str, pretrain_dir: str, floor: float) -> dict:
    """The last row of `stage_dir/eval.jsonl` if its gold reward is at least `floor`; otherwise an
    SFTQualityError that says how far off it is and what the pretraining reached."""
    from warm_jax.metrics import read_jsonl
    rows = read_jsonl(RunLayout.eval_rows(stage_dir))
    last = max(rows, key=lambda r: r["step"])
    if "gold_reward" not in last:
        raise ValueError(f"SFTConfig.min_gold_reward={floor}: the task has no oracle, so "
                         f"{stage_dir}/eval.jsonl holds no gold reward to check (unset the floor)")
    if last["gold_reward"] >= floor:
        return last
    first = min(rows, key=lambda r: r["step"])
    acc = [r["token_accuracy"] for r in read_jsonl(RunLayout.train_rows(pretrain_dir))
           if "token_accuracy" in r] if os.path.exists(
        RunLayout.train_rows(pretrain_dir)) else []
    raise SFTQualityError(
        f"SFT policy at step {last['step']}: gold reward {last['gold_reward']:.3f} ± "
        f"{last.get('gold_reward_se', float('nan')):.3f} (s.e.), below the declared floor "
        f"SFTConfig.min_gold_reward={floor} (the pretrained base: {first['gold_reward']:.3f}; "
        f"pretraining ended at token accuracy {acc[-1] if acc else float('nan'):.3f}). Every later "
        "stage would study an unconverged policy, so the run stops here; the SFT checkpoints and "
        f"{stage_dir}/eval.jsonl are kept. Train longer (PRETRAIN_STEPS, SFT_STEPS) or, knowingly, "
        "lower the floor.")


def _sft_eval(stage_dir, base_dir, task, model_cfg, eval_samples, seed, sampling) -> None:
    """eval.jsonl: gold reward and KL to the base at the base and every kept SFT checkpoint."""
    eval_path = RunLayout.eval_rows(stage_dir)
    if not os.path.exists(eval_path):
        sampling = dataclasses.replace(sampling or SamplingConfig(
            max_new_tokens=task.max_response_len), eos_id=task.eos_id, pad_id=task.pad_id)
        base_params, _ = restore_params(base_dir)
        evaluate = make_evaluate_samples(task, model_cfg, sampling, eval_samples, seed)
        ck = Checkpointer(os.path.join(stage_dir, "checkpoints"), read_only=True)
        rows = [(0, evaluate(base_params, base_params))]
        for step in ck.all_steps():
            p, _ = restore_params(ck.directory, step)
            rows.append((step, evaluate(p, base_params)))
        write_jsonl(eval_path, [{"step": step, **m} for step, m in rows])


def make_evaluate_samples(task, model_cfg: ModelConfig, sampling: SamplingConfig, n: int,
                          seed: int):
    """`evaluate(params, ref_params) -> row`: gold reward, KL(π‖π_ref) (k1, summed over tokens)
    and length of samples on the first `n` eval prompts. Its programs are compiled once for every
    checkpoint it evaluates."""
    lm = LanguageModel(model_cfg)
    prompts = jnp.asarray(task.prompts("eval")[:n])
    sample = jax.jit(make_sampler(lm, sampling))
    score = jax.jit(lambda p, tokens, mask: response_logprobs(lm, p, prompts, tokens, mask,
                                                              sampling.temperature))

    def evaluate(params, ref_params) -> dict:
        out = sample(params, prompts, jnp.ones_like(prompts), jax.random.PRNGKey(seed))
        kl = (score(params, out.tokens_BxN, out.mask_BxN) -
              score(ref_params, out.tokens_BxN, out.mask_BxN)).sum(-1)
        row = {"kl": float(jnp.mean(kl)), "length": float(jnp.mean(out.mask_BxN.sum(-1))),
               "sample": task.decode(out.tokens_BxN[0], out.mask_BxN[0])}
        if task.has_oracle:
            gold_B = np.asarray(task.gold_reward(prompts, out.tokens_BxN, out.mask_BxN))
            row["gold_reward"] = float(np.mean(gold_B))
            row["gold_reward_se"] = float(np.std(gold_B, ddof=1) / np.sqrt(len(gold_B)))
        return row
    return evaluate


def _check_vocab(task, model_cfg: ModelConfig) -> None:
    if model_cfg.vocab_size < task.vocab_size:
        raise ValueError(f"ModelConfig.vocab_size={model_cfg.vocab_size} is smaller than the task's "
                         f"vocabulary ({task.vocab_size})")
    need = task.prompt_len + task.max_response_len
    if model_cfg.max_len < need:
        raise ValueError(f"ModelConfig.max_len={model_cfg.max_len} < prompt + response = {need}")
