"""The host side of averaging, without JAX: Σ_i w_i φ_i with numpy, window by window, into
64-byte-aligned float32 buffers. `soup` streams members' windows through it; `presum` runs it in a
process forked before JAX is imported (the command line's early sum), which is why nothing here
may import JAX or orbax."""
from __future__ import annotations

import collections
from typing import Any, Callable, Sequence

import numpy as np


class AverageError(ValueError):
    """Members that cannot be averaged, or an average that cannot be written (says which)."""


def normalise_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Weights summing to one (uniform for None), checked."""
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise AverageError(f"{len(weights)} weights for {n} members")
    w = np.asarray(weights, np.float64)
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise AverageError(f"weights must be finite and non-negative with a positive sum, got "
                           f"{list(weights)}")
    return (w / w.sum()).tolist()


def leaf_chunks(leaves: dict, chunk_bytes: int) -> list[list[str]]:
    """The leaves' paths in order, cut into runs of about `chunk_bytes` (at least one leaf each):
    the slices read together by the averages and merges that go through orbax."""
    chunks, cur, size = [], [], 0
    for k, x in leaves.items():
        n = int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
        if cur and size + n > chunk_bytes:
            chunks.append(cur)
            cur, size = [], 0
        cur.append(k)
        size += n
    return chunks + ([cur] if cur else [])


def aligned(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised array on a 64-byte boundary: `jax.device_put` then wraps it on the CPU
    without a copy (a misaligned one is copied)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + n].view(dtype).reshape(shape)


def size_and_row(shape) -> tuple[int, int]:
    """(elements, elements per index of the first axis) of an array shape (row 1 for scalars)."""
    n = int(np.prod(shape, dtype=np.int64))
    return n, max(1, int(np.prod(shape[1:], dtype=np.int64))) if len(shape) else 1


_BLOCK = 1 << 16  # elements per block of the weighted sum (256 KiB of float32): stays in cache


def weighted_sum(out: np.ndarray, xs: Sequence[np.ndarray], w: Sequence[float],
                  tmp: np.ndarray) -> None:
    """out = Σ_i float32(w_i) * float32(x_i), summed in member order, block by block: each block
    of `out` stays in cache while every member's block is added, so memory traffic is one read of
    each member and one write of the sum (x_i may be read-only views of another float dtype)."""
    for s in range(0, out.size, _BLOCK):
        e = min(out.size, s + _BLOCK)
        o, t = out[s:e], tmp[:e - s]
        np.multiply(xs[0][s:e], np.float32(w[0]), out=o, dtype=np.float32, casting="unsafe")
        for x, wi in zip(xs[1:], w[1:]):
            np.multiply(x[s:e], np.float32(wi), out=t, dtype=np.float32, casting="unsafe")
            np.add(o, t, out=o)


def stream(fetch: Callable[[str, int, int, int], Any], leaves: dict,
            w: Sequence[float], inflight_bytes: int, window_bytes: int | None = None,
            release: Callable[[Any], None] = lambda r: None,
            alloc: Callable[[str, tuple], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Σ_i w_i φ_i with numpy into 64-byte-aligned float32 arrays, window by window: a window is
    elements [lo, hi) of one leaf's flat array (`window_bytes` of it; None: the whole leaf), and
    `fetch(path, member, lo, hi)` returns a future of it (an array, or an object with `.array`,
    handed to `release` once summed). Windows of every member are kept in flight, up to
    `inflight_bytes` of them (at least one window), so reader threads read ahead while this
    thread sums. `alloc(path, shape)` gives each leaf's float32 output buffer (default:
    `aligned`)."""
    jobs = []
    for p, x in leaves.items():
        n, row = size_and_row(x.shape)
        step = n if window_bytes is None else max(
            row, window_bytes // x.dtype.itemsize // row * row)  # whole rows of the first axis
        jobs += [(p, lo, min(n, lo + step)) for lo in range(0, n, max(step, 1))] or [(p, 0, 0)]
    alloc = alloc or (lambda p, shape: aligned(shape))
    acc = {p: alloc(p, tuple(x.shape)) for p, x in leaves.items()}
    tmp = np.empty(_BLOCK, np.float32)
    pending: collections.deque = collections.deque()
    inflight, nxt = 0, 0
    nbytes = lambda job: (job[2] - job[1]) * leaves[job[0]].dtype.itemsize * len(w)  # noqa: E731
    while nxt < len(jobs) or pending:
        while nxt < len(jobs) and (not pending or inflight + nbytes(jobs[nxt]) <= inflight_bytes):
            p, lo, hi = jobs[nxt]
            pending.append((jobs[nxt], [fetch(p, i, lo, hi) for i in range(len(w))]))
            inflight += nbytes(jobs[nxt])
            nxt += 1
        (p, lo, hi), futs = pending.popleft()
        got = [f.result() for f in futs]
        xs = [np.asarray(getattr(g, "array", g)).reshape(-1) for g in got]
        weighted_sum(acc[p].reshape(-1)[lo:hi], xs, w, tmp)
        inflight -= nbytes((p, lo, hi))
        del xs
        for g in got:
            release(g)
        del got, futs
    return acc


def raw_sum(plans: Sequence[dict], leaves: dict, w: Sequence[float], inflight_bytes: int,
            read_threads: int = 4, window_bytes: int = 8 << 20,
            alloc: Callable[[str, tuple], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """`stream` over windows mapped straight from the members' files (`rawread.plan` of each
    member: {path: Extent}), reader threads bringing them into the page cache ahead of the sum.
    An unreadable or truncated file raises OSError."""
    import concurrent.futures

    from warm_jax.average import rawread
    with concurrent.futures.ThreadPoolExecutor(read_threads) as pool:
        def fetch(p, i, lo, hi):
            return pool.submit(rawread.mapped, plans[i][p], leaves[p].dtype, lo, hi)
        return stream(fetch, leaves, w, inflight_bytes, window_bytes, lambda m: m.close(), alloc)
