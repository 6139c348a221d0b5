"""Grain pipelines: deterministic shuffling by seed (data order is a WARM diversity source),
checkpointable iterator state, padding to a few bucketed lengths."""
from __future__ import annotations

from typing import Mapping, Sequence

import grain
import numpy as np


def batch_iterator(columns: Mapping[str, np.ndarray], *, batch_size: int, seed: int,
                   shuffle: bool = True, num_epochs: int | None = None,
                   buckets: Mapping[str, Sequence[int]] | None = None):
    """An iterator of dict batches over row-aligned numpy `columns`; `get_state()`/`set_state()`
    resume it exactly. Every epoch is a fresh permutation derived from `seed`. With `buckets`
    ({column: lengths}), each batch's padded columns are trimmed to the smallest bucket that holds
    its longest row (see `trim_to_bucket`)."""
    n = len(next(iter(columns.values())))
    for k, v in columns.items():
        if len(v) != n:
            raise ValueError(f"column {k!r} has {len(v)} rows, expected {n}")
    if batch_size < 1 or batch_size > n:
        raise ValueError(f"batch_size={batch_size} is out of range: allowed [1, {n}] rows")
    ds = grain.MapDataset.range(n)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs).batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda idx: {k: v[np.asarray(idx)] for k, v in columns.items()})
    if buckets:
        ds = ds.map(lambda b: trim_to_bucket(b, buckets))
    # in-memory columns: no reader threads, no prefetch (grain's defaults, 16 threads and 500
    # batches per iterator, cost more than the training they feed, and fight it for the GIL)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def trim_to_bucket(batch: Mapping[str, np.ndarray], buckets: Mapping[str, Sequence[int]]) -> dict:
    """Cut padding off `name` and `name_mask` down to a bucket length. A column whose mask ends in
    real tokens (left padding, e.g. prompts) loses columns on the left, others on the right."""
    out = dict(batch)
    for name, lengths in buckets.items():
        mask = batch[name + "_mask"]
        left_padded = bool(mask[:, -1].all()) and not bool(mask[:, 0].all())
        real = mask.astype(bool)
        if left_padded:
            need = mask.shape[1] - int(np.argmax(real.any(0)))
        else:
            need = int(mask.shape[1] - np.argmax(real.any(0)[::-1])) if real.any() else 1
        L = min(bucket_length(need, lengths), mask.shape[1])
        sl = slice(mask.shape[1] - L, None) if left_padded else slice(0, L)
        out[name], out[name + "_mask"] = batch[name][:, sl], mask[:, sl]
    return out


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `n` (padding to a few lengths keeps recompilations few)."""
    for b in sorted(buckets):
        if n <= b:
            return b
    raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}")


def pad_rows(rows: Sequence[Sequence[int]], length: int, pad_id: int = 0,
             side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """Token rows -> (tokens_NxL, mask_NxL) padded on `side`; rows longer than `length` are an error."""
    toks = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        if len(r) > length:
            raise ValueError(f"row {i} has {len(r)} tokens, longer than the padded length {length}")
        sl = slice(0, len(r)) if side == "right" else slice(length - len(r), length)
        toks[i, sl] = r
        mask[i, sl] = 1
    return toks, mask
