"""Sweeps: the product over named axes of gin bindings. A work unit is one
`python -m warm_jax.main` launch with its own work directory; runners (local, XManager) only run them.

    units = product_sweep("lr_alpha", ["experiments/demo.gin"],
                          {"SEED": [0, 1, 2], "ALPHAS": [(0.01,), (0.05,)]}, root="runs/sweeps")
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import re
import sys
from typing import Any, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    name: str
    gin_files: tuple[str, ...]
    bindings: tuple[tuple[str, Any], ...]
    workdir: str

    def argv(self, python: str = sys.executable) -> list[str]:
        args = [python, "-m", "warm_jax.main"] + [f"--gin_file={f}" for f in self.gin_files]
        args += [f"--gin.{k}={v!r}" for k, v in self.bindings]
        return args + [f"--gin.WORKDIR={self.workdir!r}"]


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(value)).strip("_")


def product_sweep(name: str, gin_files: Sequence[str], axes: Mapping[str, Sequence[Any]], *,
                  root: str = "runs/sweeps", fixed: Mapping[str, Any] | None = None
                  ) -> list[WorkUnit]:
    """One work unit per point of the product of `axes` (gin macro or parameter -> values)."""
    if not axes:
        raise ValueError("product_sweep: no axes")
    for k, v in axes.items():
        if not v:
            raise ValueError(f"product_sweep axis {k!r} has no values")
    keys = list(axes)
    units = []
    for values in itertools.product(*(axes[k] for k in keys)):
        point = tuple(zip(keys, values))
        tag = "-".join(f"{_slug(k.split('.')[-1])}={_slug(v)}" for k, v in point)
        units.append(WorkUnit(name=f"{name}/{tag}", gin_files=tuple(gin_files),
                              bindings=tuple((fixed or {}).items()) + point,
                              workdir=os.path.join(root, name, tag)))
    return units


SWEEPS = {
    # the RL matrix of the demo over more seeds and α, one work unit each (shared init not shared:
    # each unit is a whole pipeline; point WORKDIR at a finished demo to reuse its stages instead)
    "demo_seeds": lambda root: product_sweep(
        "demo_seeds", ["experiments/demo.gin"], {"SEEDS": [(0,), (1,), (2,)],
                                                  "ALPHAS": [(0.003,), (0.01,), (0.05,)]},
        root=root),
    # reward-model learning-rate sweep on the toy task
    "rm_lr": lambda root: product_sweep(
        "rm_lr", ["experiments/demo.gin"],
        {"warm_jax.DiversityConfig.learning_rates": [(3e-4,), (1e-3,), (3e-3,)]}, root=root,
        fixed={"RL_METHODS": ()}),
}
