"""What every stage reads of a task (`Task`), and of a task with a known gold reward (`OracleTask`).

A task is the toy task (warm_jax.data.toy) or a file of human preferences (warm_jax.data.real);
the OOD stage wraps either with one more preference split (warm_jax.ood). Chain seed s sees the
task as `seeded_task(task, s)`: its own draw of the training labels where labels are drawn.
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np

SPLITS = ("train", "validation", "test")  # the preference splits every task provides


@runtime_checkable
class Task(Protocol):
    name: str
    has_oracle: bool          # True: an `OracleTask`
    splits: tuple[str, ...]   # its preference splits: SPLITS, and more where a wrapper adds them
    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int
    prompt_len: int
    max_response_len: int
    input_layer: int          # 0: pairs of tokens; k > 0: the states entering block k (rm.trunk)

    def for_seed(self, seed: int) -> "Task": ...
    def preference_split(self, split: str) -> dict[str, np.ndarray]: ...
    def prompts(self, split: str) -> np.ndarray: ...
    def pretrain_corpus(self) -> dict[str, np.ndarray]: ...
    def sft_demonstrations(self) -> dict[str, np.ndarray]: ...
    def decode(self, tokens, mask=None) -> str: ...


@runtime_checkable
class OracleTask(Task, Protocol):
    gold_fn: Callable          # (prompt_BxP, response_BxR, mask_BxR) -> gold_B, jittable

    def gold_reward(self, prompt_BxP, response_BxR, mask_BxR) -> np.ndarray: ...
    def label_pairs(self, prompts, a, am, b, bm, rng, *, flip: bool, hard=None) -> dict: ...


def seeded_task(task: Task, seed: int) -> Task:
    """The task as chain seed `seed` sees it."""
    return task.for_seed(seed)


def chain_seed(base: int, seed: int) -> int:
    """The random seed a chain uses where the run used `base` (chain seed 0 keeps `base`)."""
    return int(base) + 10_007 * int(seed)


def oracle_of(task: Task) -> Callable | None:
    """The task's jittable gold reward, or None for a task without one (human preferences)."""
    return task.gold_fn if task.has_oracle else None
