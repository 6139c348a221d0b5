"""The sampled OOD split: preference pairs between responses of policies unlike the offline data.

WARM's OOD set (§5) compares summaries sampled from *other* policies (pretrained, SFT and RLHF
policies at high temperature), not from the policy that wrote the RM's training pairs. The toy
analogue, built once after SFT and before any reward model (the pipeline runs one way, so the RL
policies, which come later, are not among the sources):

  for each prompt of the task's `ood` prompt split, two independent responses from ONE source
  policy, the sources taking turns: the pretrained base at T = 1, the final SFT policy at T = 1.5,
  the final SFT policy at T = 1;

labelled by the task's own oracle labeller (Bradley–Terry at its temperature, no flipped labels).
Writes `<workdir>/ood/pairs.npz` (the split, with each pair's `source`) and `ood/summary.jsonl`:
per evaluation split, the *oracle accuracy* (how often the labels agree with the gold comparison,
ties counting ½), the ceiling any reward model can reach there, and the share of tied pairs.

Reward-model stages read the split through `with_ood(task, path)`, which adds `ood` to the task's
preference splits (`splits_of`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax import checks
from warm_jax.checkpoint import restore_params
from warm_jax.fileio import atomic_write, write_jsonl
from warm_jax.layout import RunLayout
from warm_jax.models import ModelConfig, SamplingConfig, jitted_sampler
from warm_jax.progress import note_work
from warm_jax.data.task import SPLITS, Task

SOURCES = (("pretrain", 1.0), ("sft", 1.5), ("sft", 1.0))
SPLIT = "ood"


def oracle_accuracy(gold_margin: np.ndarray) -> float:
    """Agreement of the stored labels with the gold comparison (gold margin chosen − rejected > 0;
    a tie counts ½): what a reward model equal to the gold reward would score on the split."""
    g = np.asarray(gold_margin, np.float64)
    return float(np.mean((g > 0) + 0.5 * (g == 0)))


def sample_pairs(task, model_cfg: ModelConfig, params_by_source: Sequence, temperatures:
                 Sequence[float], prompts_NxP: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Two responses per prompt from source `i % len(sources)`; one compiled sampler for all."""
    sampling = SamplingConfig(max_new_tokens=task.max_response_len, eos_id=task.eos_id,
                              pad_id=task.pad_id)
    sample = jitted_sampler(model_cfg, sampling)
    N = len(prompts_NxP)
    source_N = np.arange(N) % len(params_by_source)
    twice_2NxP = jnp.asarray(np.concatenate([prompts_NxP, prompts_NxP]))
    toks, masks = [], []
    for k, (params, t) in enumerate(zip(params_by_source, temperatures)):
        out = sample(params, twice_2NxP, jnp.ones_like(twice_2NxP),
                     jax.random.fold_in(jax.random.PRNGKey(seed), k), jnp.float32(t))
        toks.append(np.asarray(out.tokens_BxN))
        masks.append(np.asarray(out.mask_BxN))
    pick = lambda xs, half: np.stack(xs)[source_N, half * N + np.arange(N)]  # noqa: E731
    return {"a": pick(toks, 0), "a_mask": pick(masks, 0), "b": pick(toks, 1),
            "b_mask": pick(masks, 1), "source": source_N}


@dataclasses.dataclass(frozen=True)
class OODConfig:
    """`sources`: (policy, temperature) pairs, policy 'pretrain' or 'sft', taking turns."""
    sources: Sequence[Sequence] = SOURCES
    seed: int = 0

    def __post_init__(self):
        src = tuple(tuple(s) for s in self.sources) if isinstance(self.sources, (list, tuple)) \
            else None
        if not src or any(len(s) != 2 or s[0] not in ("pretrain", "sft") or isinstance(s[1], bool)
                          or not isinstance(s[1], (int, float)) or not s[1] > 0 for s in src):
            checks.fail(self, "sources", "(policy, temperature) pairs, policy in ('pretrain', "
                        "'sft'), temperature > 0")
        object.__setattr__(self, "sources", src)
        checks.integers(self, 0, "seed")


def ood_pairs(*, workdir: str, task, model_cfg: ModelConfig, cfg: OODConfig) -> str:
    """The `ood_pairs` stage (see the module doc); skips if `ood/pairs.npz` exists."""
    if not task.has_oracle:   # an OracleTask labels sampled pairs (warm_jax.data.task)
        raise ValueError(f"ood_pairs: task {task.name!r} has no oracle labeller "
                         "to label sampled pairs with; drop the ood_pairs stage for it")
    sources, seed = cfg.sources, cfg.seed
    layout = RunLayout(workdir)
    config = dict(task=task, model_cfg=model_cfg, sources=[list(s) for s in sources], seed=seed)
    with layout.stage("ood_pairs", layout.ood, config):
        if not os.path.exists(layout.ood_pairs):
            note_work()
            _build(layout, task, model_cfg, sources, seed)
    if jax.process_count() > 1:  # the file is process 0's; every process reads it next
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("ood_pairs")
    return layout.ood_pairs


def _build(layout: RunLayout, task, model_cfg, sources, seed) -> None:
    ckpt = {"pretrain": layout.checkpoints(layout.pretrain),
            "sft": layout.checkpoints(layout.sft)}
    loaded = {name: restore_params(d)[0] for name, d in ckpt.items()
              if name in {s[0] for s in sources}}
    prompts = task.prompts(SPLIT)
    s = sample_pairs(task, model_cfg, [loaded[n] for n, _ in sources],
                     [float(t) for _, t in sources], prompts, seed)
    rng = np.random.default_rng([seed, 0x00D])
    pairs = task.label_pairs(prompts, s["a"], s["a_mask"], s["b"], s["b_mask"], rng, flip=False)
    pairs["source"] = s["source"].astype(np.int32)
    rows = []
    for split in SPLITS[1:] + (SPLIT,):
        g = (pairs if split == SPLIT else task.preference_split(split))["gold_margin"]
        rows.append({"split": split, "pairs": len(g), "oracle_accuracy": oracle_accuracy(g),
                     "ties": float(np.mean(np.asarray(g) == 0))})
    for k, (name, t) in enumerate(sources):
        g = pairs["gold_margin"][pairs["source"] == k]
        rows.append({"split": SPLIT, "source": f"{name} T={t:g}", "pairs": len(g),
                     "oracle_accuracy": oracle_accuracy(g), "ties": float(np.mean(g == 0))})
    write_jsonl(layout.ood_summary, rows)  # first: pairs.npz marks the stage done
    atomic_write(layout.ood_pairs, lambda f: np.savez(f, **pairs))


# --- the task with the sampled split ---------------------------------------------------------

def splits_of(task: Task) -> tuple[str, ...]:
    """The preference splits `task` provides (SPLITS, plus `ood` under `with_ood`)."""
    return tuple(task.splits)


class WithOOD:
    """`task` with the sampled `ood` preference split of `path` (the same for every chain seed:
    its labels do not depend on the training-label draw)."""

    def __init__(self, task, path: str):
        self._task, self.path = task, path
        self.splits = tuple(splits_of(task)) + (SPLIT,)
        self._ood = None

    def __getattr__(self, name):  # everything else is the task's (cfg, prompts, gold_reward, ...)
        return getattr(self._task, name)

    def for_seed(self, seed: int) -> "WithOOD":
        inner = self._task.for_seed(seed) if hasattr(self._task, "for_seed") else self._task
        out = WithOOD(inner, self.path)
        out._ood = self._ood
        return out

    def preference_split(self, split: str) -> dict[str, np.ndarray]:
        if split != SPLIT:
            return self._task.preference_split(split)
        if self._ood is None:
            with np.load(self.path) as z:
                self._ood = {k: z[k] for k in z.files}
        return dict(self._ood)


def with_ood(task, path: str) -> WithOOD:
    """`task` plus the split at `path`; a missing file is an error that names the stage."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: run the ood_pairs stage before the "
                                "reward-model stages (or set their ood_pairs=False)")
    return WithOOD(task, path)
