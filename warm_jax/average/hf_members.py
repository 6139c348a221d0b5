"""WARM on Hugging Face reward models: average `*ForSequenceClassification` (or `*ForCausalLM`)
directories trained elsewhere (TRL, say), with the checks mergekit does not make.

Before anything is written: every member imports (`models.hf.hf_config`: a family and config
warm_jax reproduces), all share one config and one set of tensor names, shapes and dtypes, and none
is given twice. With `base` (the pre-trained or SFT model they were fine-tuned from), each member
must be a fine-tuning of it: the statistic is the relative distance ‖θ_m − θ_base‖ / ‖θ_base‖ over
every tensor the two share by name and shape (the body; a reward head has no counterpart in a
causal LM). Fine-tuning moves weights a few percent; two independently trained models of one shape
sit about √2 apart. A member above `MAX_RELATIVE_DISTANCE` is refused, naming its distance.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Sequence

import numpy as np

from warm_jax.average import is_hf_dir
from warm_jax.average.hostsum import AverageError, normalise_weights
from warm_jax.models import hf, safetensors_io

MAX_RELATIVE_DISTANCE = 0.5
# config.json fields that describe the file, not the model
IGNORED = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "id2label",
           "label2id", "use_cache")


def _files(d: str) -> list[str]:
    index = os.path.join(d, "model.safetensors.index.json")
    return hf.shard_files(d, index) if os.path.exists(index) else [
        os.path.join(d, "model.safetensors")]


def read_tensors(d: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for f in _files(d):
        out.update(safetensors_io.read(f))
    return out


def relative_distance(member: dict, base: dict) -> float:
    """‖θ_m − θ_base‖ / ‖θ_base‖ over the tensors both have with one shape."""
    num = den = 0.0
    shared = [k for k in member if k in base and member[k].shape == base[k].shape]
    if not shared:
        raise AverageError("the base shares no tensor (by name and shape) with the members")
    for k in shared:
        a, b = np.asarray(member[k], np.float64), np.asarray(base[k], np.float64)
        num += float(np.sum((a - b) ** 2))
        den += float(np.sum(b ** 2))
    return float(np.sqrt(num / max(den, 1e-30)))


def check_members(member_dirs: Sequence[str], base: str | None = None) -> list[float] | None:
    """The checks of the module doc; returns each member's relative distance to `base`."""
    real = [os.path.realpath(d) for d in member_dirs]
    twice = sorted({d for d, r in zip(member_dirs, real) if real.count(r) > 1})
    if twice:
        raise AverageError(f"member given more than once: {twice}")
    if len(member_dirs) < 2:
        raise AverageError("averaging needs at least two members")
    configs = []
    for d in member_dirs:
        try:
            config = hf.read_config(d)
            hf.hf_config(config)
        except (OSError, ValueError) as e:
            raise AverageError(f"member {d}: {e}") from None
        configs.append({k: v for k, v in config.items() if k not in IGNORED})
    for d, c in zip(member_dirs[1:], configs[1:]):
        diff = sorted(k for k in set(c) | set(configs[0]) if c.get(k) != configs[0].get(k))
        if diff:
            raise AverageError(f"member {d}'s config.json differs from {member_dirs[0]}'s in "
                                 f"{diff}")
    headers = [{k: (tuple(h["shape"]), h["dtype"]) for f in _files(d)
                for k, h in safetensors_io.read_header(f)[0].items()} for d in member_dirs]
    for d, h in zip(member_dirs[1:], headers[1:]):
        if h != headers[0]:
            diff = sorted(k for k in set(h) | set(headers[0]) if h.get(k) != headers[0].get(k))
            raise AverageError(f"member {d}'s tensors differ from {member_dirs[0]}'s: "
                                 f"{diff[:5]}")
    if base is None:
        return None
    if not is_hf_dir(base):
        raise AverageError(f"--base {base}: not a Hugging Face directory (config.json + "
                             "model.safetensors)")
    base_t = read_tensors(base)
    dists = [relative_distance(read_tensors(d), base_t) for d in member_dirs]
    far = [(d, round(x, 3)) for d, x in zip(member_dirs, dists) if x > MAX_RELATIVE_DISTANCE]
    if far:
        raise AverageError(f"not fine-tunings of --base {base}: relative distance "
                             f"||theta - theta_base|| / ||theta_base|| {far} > "
                             f"{MAX_RELATIVE_DISTANCE}")
    return dists


def average_hf(member_dirs: Sequence[str], out_dir: str, weights: Sequence[float] | None = None,
               *, base: str | None = None, out_format: str = "hf") -> str:
    """Σ_i w_i θ_i (float32 sums, cast back to the members' dtype) of HF directories, after
    `check_members`; written as an HF directory (config.json and tokenizer files of the first
    member) or, with `out_format="warm_jax"`, as the project's checkpoint."""
    if out_format not in ("hf", "warm_jax"):
        raise AverageError(f"format {out_format!r}: allowed 'hf', 'warm_jax'")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise AverageError(f"output {out_dir} exists and is not an empty directory")
    w = normalise_weights(weights, len(member_dirs))
    dists = check_members(member_dirs, base)
    members = [read_tensors(d) for d in member_dirs]
    avg = {}
    for k in members[0]:
        acc = np.zeros(members[0][k].shape, np.float32)
        for wi, m in zip(w, members):
            acc += np.float32(wi) * np.asarray(m[k], np.float32)
        if not np.isfinite(acc).all():
            raise AverageError(f"the average of tensor {k!r} is not finite; nothing was written")
        avg[k] = acc.astype(members[0][k].dtype)
    # everything goes to a staging directory first, renamed into place when complete: a failed
    # or killed average leaves no partial output under `out_dir`
    staging = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        safetensors_io.write(os.path.join(staging, "model.safetensors"), avg, {"format": "pt"})
        for name in ("config.json",) + hf.TOKENIZER_FILES:
            if os.path.isfile(os.path.join(member_dirs[0], name)):
                shutil.copyfile(os.path.join(member_dirs[0], name), os.path.join(staging, name))
        record = {"members": [os.path.abspath(d) for d in member_dirs], "weights": list(w),
                  "base": base and os.path.abspath(base), "relative_distance_to_base": dists}
        if out_format == "warm_jax":
            from warm_jax.models.importers import import_checkpoint
            params, cfg = hf.load_safetensors(staging)
            import_checkpoint(params, cfg, out_dir, source=json.dumps(record))
            return out_dir
        with open(os.path.join(staging, "warm_average.json"), "w") as f:
            json.dump(record, f, indent=1)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)   # empty (checked above)
        os.replace(staging, out_dir)
        return out_dir
    finally:
        shutil.rmtree(staging, ignore_errors=True)
