"""Weight averaging (WARM), ensembles (ENS / WCO / UWO) and the analyses that compare them.

`average(members, out)` is the library's way to average checkpoints at the command line's speed:
this module imports nothing but the standard library, so a script or a notebook that calls it before
JAX, numpy or orbax are imported has the weighted sum start in a forked process while they import
(`presum`), as `python -m warm_jax.average` does. Called later (the pipeline's averaging stage,
which has imported JAX long before), it is `soup.average_checkpoints`, which reads and sums at the
disk's speed in a process that has everything imported (`avg_inproc_wall_over_disk_floor` in
bench/results.json)."""
from __future__ import annotations

import os
from typing import Sequence


def is_hf_dir(path: str) -> bool:
    """A Hugging Face model directory (config.json and safetensors), not a warm_jax checkpoint."""
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.exists(os.path.join(path, n))
        for n in ("model.safetensors", "model.safetensors.index.json"))


def average(member_dirs: Sequence[str], out_dir: str, weights: Sequence[float] | None = None, *,
            early_sum: bool = True, **kw) -> str:
    """`soup.average_checkpoints(member_dirs, out_dir, weights, **kw)`, its sum started before
    JAX is imported where that is still possible (see the module doc); the same bits either way."""
    from warm_jax.average.presum import PreSum
    presum = PreSum.start(list(member_dirs), weights) if early_sum else None
    try:
        from warm_jax.average.soup import average_checkpoints
        return average_checkpoints(list(member_dirs), out_dir, weights, presum=presum, **kw)
    finally:
        if presum is not None:
            presum.cancel()
