"""Reward models fine-tuned over cached trunk states: the frozen bottom blocks of a pretrained
model run once over every sequence, and the M members train and are scored on the top blocks.

Why: on a 2-core CPU SmolLM2-135M runs ~750 tokens/s forward; fine-tuning whole members on the
HH-RLHF pairs would take hours. With blocks [0, k) frozen their output never changes, so it is
computed once (`cache_trunk_states`) and each member step costs blocks [k, L) alone. A member is
what fine-tuning those blocks of the whole model gives with no dropout in the frozen blocks (their
states are computed once, deterministically: a member's dropout acts on the blocks it trains);
`full_params` puts a member's (or an average's) top blocks back on the base, for export and for
scoring on tokens.

The stage writes `<workdir>/trunk/layer_<k>/<split>/part_<j>.npz` (each whole or absent, so a kill
loses at most one part): every sequence (prompt + chosen, prompt + rejected) packed to its real
tokens at the front, run in batches of similar length. `TrunkTask` serves them as pairs of states.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax import checks
from warm_jax.checkpoint import Checkpointer, fingerprint, restore_params
from warm_jax.fileio import atomic_write, kill_point
from warm_jax.layout import RunLayout
from warm_jax.models import ModelConfig
from warm_jax.models.transformer import Decoder
from warm_jax.progress import progress

LENGTH_STEP = 64   # batches are padded to a multiple of this: few lengths, few compilations


@dataclasses.dataclass(frozen=True)
class TrunkConfig:
    """`source`: the token preference task whose pairs are cached. `first_layer` = k: blocks
    [0, k) are the frozen trunk, blocks [k, L), the final norm and the head are fine-tuned."""
    source: Any = None
    first_layer: int = 1
    batch_size: int = 16
    part_size: int = 256   # sequences per part file (what a kill can lose)

    def __post_init__(self):
        checks.integers(self, 1, "first_layer", "batch_size", "part_size")


class TrunkTask:
    """The pairs of `cfg.source` as the states entering block `cfg.first_layer` (`input_layer`):
    {chosen, chosen_mask, rejected, rejected_mask, flipped} per split, the states right-padded to
    the split's longest sequence. Read from `workdir` once per task object."""
    name = "trunk_states"
    has_oracle = False

    def __init__(self, cfg: TrunkConfig, workdir: str):
        if cfg.source is None:
            raise ValueError("TrunkConfig.source is unset: bind it to a preference task")
        self.cfg, self.workdir = cfg, workdir
        self.input_layer = cfg.first_layer
        self._loaded: dict[str, dict] = {}

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.cfg.source.splits)

    def for_seed(self, seed: int) -> "TrunkTask":
        """One set of states for every chain seed: only a source whose labels do not depend on
        the seed (human preferences, `PreferenceFileTask`) can be cached once."""
        if self.cfg.source.for_seed(seed) is not self.cfg.source:
            raise ValueError(f"TrunkConfig.source {type(self.cfg.source).__name__} draws its "
                             "labels per chain seed: its pairs cannot be cached once for every "
                             "seed (a preference file's can)")
        return self

    def load_summary(self):
        return self.cfg.source.load_summary()

    def directory(self, split: str) -> str:
        return RunLayout(self.workdir).trunk(self.cfg.first_layer, split)

    def preference_split(self, split: str) -> dict[str, np.ndarray]:
        if split not in self._loaded:
            flipped = self.cfg.source.preference_split(split)["flipped"]
            states, lengths = read_states(self.directory(split), 2 * len(flipped))
            mask = (np.arange(states.shape[1]) < lengths[:, None]).astype(np.int32)
            n = len(flipped)
            self._loaded[split] = {"chosen": states[:n], "chosen_mask": mask[:n],
                                   "rejected": states[n:], "rejected_mask": mask[n:],
                                   "flipped": flipped}
        return self._loaded[split]

    def prompts(self, split: str):
        raise ValueError("TrunkTask holds reward-model inputs only (cached states, no tokens): "
                         "sample policies from the source task")


def packed_sequences(split: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens_SxT, lengths_S) of the 2N sequences prompt + chosen, then prompt + rejected, each
    with its real tokens moved to the front. Positions count real tokens (`positions_from_mask`),
    so a block computes the same states for them packed or padded."""
    rows, masks = [], []
    for resp in ("chosen", "rejected"):
        rows.append(np.concatenate([split["prompt"], split[resp]], 1))
        masks.append(np.concatenate([split["prompt_mask"], split[resp + "_mask"]], 1))
    tokens, mask = np.concatenate(rows), np.concatenate(masks).astype(bool)
    order = np.argsort(~mask, axis=1, kind="stable")   # real tokens first, in their order
    packed = np.take_along_axis(np.where(mask, tokens, 0), order, axis=1)
    return packed.astype(np.int32), mask.sum(1).astype(np.int32)


def make_trunk(model_cfg: ModelConfig, first_layer: int):
    """`trunk(body_params, tokens_BxT, mask_BxT) -> states_BxTxD` entering block `first_layer`."""
    decoder = Decoder(model_cfg, stop=first_layer)

    @jax.jit
    def trunk(body, tokens_BxT, mask_BxT):
        return decoder.apply({"params": body}, tokens_BxT, mask_BxT)[0]
    return trunk


def _part_path(directory: str, j: int) -> str:
    return os.path.join(directory, f"part_{j:04d}.npz")


def compute_states(directory: str, trunk, body: dict, tokens_SxT: np.ndarray,
                   lengths_S: np.ndarray, *, batch_size: int, part_size: int, desc: str) -> None:
    """Write the states of every sequence, by parts of `part_size` sequences of similar length
    (shortest first), in float32 whatever the model computes in; parts already on disk are kept
    (the stage's recorded config pins `part_size`, so part j always holds the same sequences)."""
    order_S = np.argsort(lengths_S, kind="stable")
    parts = [order_S[i:i + part_size] for i in range(0, len(order_S), part_size)]
    todo = [j for j in range(len(parts)) if not os.path.exists(_part_path(directory, j))]
    for j in progress(todo, desc=desc) if todo else ():
        idx_P = parts[j]
        width = int(np.ceil(max(int(lengths_S[idx_P].max()), 1) / LENGTH_STEP) * LENGTH_STEP)
        width = min(width, tokens_SxT.shape[1])
        chunks = []
        for b in range(0, len(idx_P), batch_size):
            rows_B = idx_P[b:b + batch_size]
            tokens_BxW = np.zeros((batch_size, width), np.int32)   # full batches: one shape
            tokens_BxW[:len(rows_B)] = tokens_SxT[rows_B, :width]
            lengths_B = np.concatenate([lengths_S[rows_B],
                                        np.ones(batch_size - len(rows_B), np.int32)])
            mask_BxW = (np.arange(width) < lengths_B[:, None]).astype(np.int32)
            states_BxWxD = trunk(body, jnp.asarray(tokens_BxW), jnp.asarray(mask_BxW))
            chunks.append(np.asarray(states_BxWxD, np.float32)[:len(rows_B)])
        states_PxWxD = np.concatenate(chunks)
        states_PxWxD[np.arange(width)[None, :] >= lengths_S[idx_P][:, None]] = 0   # padding
        if not np.isfinite(states_PxWxD).all():
            raise FloatingPointError(f"trunk states of {directory} part {j} are not finite: "
                                     "the base model's weights hold NaN or Inf")

        def write(f, idx_P=idx_P, states_PxWxD=states_PxWxD):
            np.savez(f, index=idx_P, lengths=lengths_S[idx_P], states=states_PxWxD)
        kill_point("trunk.part")
        atomic_write(_part_path(directory, j), write)


def read_states(directory: str, num_sequences: int) -> tuple[np.ndarray, np.ndarray]:
    """(states_SxTxD, lengths_S) from the part files, T the longest sequence; every sequence
    must be in exactly one part."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no trunk states at {directory}: run the trunk stage first")
    parts = []
    for name in sorted(os.listdir(directory)):
        if name.startswith("part_") and name.endswith(".npz"):
            with open(os.path.join(directory, name), "rb") as f:
                z = np.load(io.BytesIO(f.read()))
                parts.append((z["index"], z["lengths"], z["states"]))
    seen_S = np.bincount(np.concatenate([p[0] for p in parts]).astype(np.int64),
                         minlength=num_sequences) if parts else np.zeros(num_sequences, int)
    if len(seen_S) != num_sequences or (seen_S > 1).any():
        raise ValueError(f"{directory} holds parts of another trunk run (sequences outside "
                         f"[0, {num_sequences}) or in two parts): remove it and rerun the stage")
    if (seen_S == 0).any():
        raise FileNotFoundError(f"{directory} holds {int((seen_S > 0).sum())} of {num_sequences} "
                                "sequences: rerun the trunk stage to finish it")
    T = max(int(p[1].max()) for p in parts)
    D = parts[0][2].shape[-1]
    states_SxTxD = np.zeros((num_sequences, T, D), np.float32)
    lengths_S = np.zeros(num_sequences, np.int32)
    for idx_P, lens_P, states_PxWxD in parts:
        w = min(states_PxWxD.shape[1], T)
        states_SxTxD[idx_P, :w] = states_PxWxD[:, :w]
        lengths_S[idx_P] = lens_P
    return states_SxTxD, lengths_S


def cache_trunk_states(*, workdir: str, task: TrunkTask, model_cfg: ModelConfig) -> str:
    """Stage: the states entering block `first_layer` of the base model (`<workdir>/sft`, where
    `import_base` puts a pretrained model) for every sequence of every split."""
    cfg = task.cfg
    if not 1 <= cfg.first_layer < model_cfg.n_layers:
        raise checks.ConfigError("TrunkConfig", "first_layer", cfg.first_layer,
                                 f"an integer in [1, {model_cfg.n_layers - 1}] (the model has "
                                 f"{model_cfg.n_layers} blocks)")
    layout = RunLayout(workdir)
    base_dir = layout.checkpoints(layout.sft)
    params = restore_params(base_dir)[0]
    base = Checkpointer(base_dir, read_only=True).restore_meta().get("base_fingerprint") \
        or fingerprint(params)
    out = layout.trunk(cfg.first_layer)
    config = {"trunk": task.cfg, "model_cfg": model_cfg, "base_fingerprint": base}
    with layout.stage("trunk", out, config):
        trunk = make_trunk(model_cfg, cfg.first_layer)
        body = jax.tree.map(jnp.asarray, params["body"])
        for split in task.splits:
            tokens, lengths = packed_sequences(cfg.source.preference_split(split))
            compute_states(task.directory(split), trunk, body, tokens, lengths,
                           batch_size=cfg.batch_size, part_size=cfg.part_size,
                           desc=f"trunk {split} (blocks 0-{cfg.first_layer - 1})")
    return out


def full_params(base: dict, top: dict) -> dict:
    """A whole reward model: the base's embedding and trunk blocks, `top`'s blocks, final norm and
    head (a top-block member or average, `RewardModel(input_layer=k)`)."""
    body = dict(base["body"])
    body.update(top["body"])
    return {"body": body, "reward_head": top["reward_head"]}
