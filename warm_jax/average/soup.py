"""Streaming, in-place weight averaging of orbax checkpoints: φ_WARM = Σ_i w_i φ_i.

Members are validated first (structure, shapes, dtypes, base fingerprint) from metadata alone, so a
mismatch fails before anything is read or written. On one host, the members' arrays are then summed
window by window (8 MiB of each member's array at a time, every member's window summed while it is
in cache) straight from the files orbax wrote (`rawread`: mapped, no decode, no copy), or through
tensorstore for compressed checkpoints, with `chunk_bytes` of windows read ahead on threads: peak
memory is one float32 model (the sum; twice the checkpoint for bfloat16 members) plus the windows
in flight, whatever M is, and a 2-core CPU averages at about the disk's speed (`hostsum` holds
this numpy side; the command line can run it early, in a forked process: `presum`). Sharded (or
multi-process) averages restore `chunk_bytes` of leaves at a time through orbax into shardings,
so a sharded model is summed shard by shard and never gathered onto one host. The result is
committed atomically by orbax and records its members and weights.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from warm_jax.average import hostsum, rawread
from warm_jax.average.hostsum import AverageError, normalise_weights  # noqa: F401 - re-exported
from warm_jax.checkpoint import Checkpointer, NonFiniteError, flatten, nonfinite_leaves, path_str
from warm_jax.guards import LockedError, output_lock

log = logging.getLogger(__name__)


def _open(member_dirs: Sequence[str]) -> list[tuple[Checkpointer, int, dict]]:
    out = []
    for d in member_dirs:
        try:
            ck = Checkpointer(d, read_only=True)
            step = ck.latest_step()
            if step is None:
                raise FileNotFoundError(f"no committed checkpoint in {d}")
            out.append((ck, step, ck.restore_meta(step)))
        except Exception as e:  # noqa: BLE001 - name the member whatever broke
            raise AverageError(f"member {d} is missing or unreadable: {e}") from None
    return out


def check_compatible(members: list[tuple[Checkpointer, int, dict]], *,
                     allow_base_mismatch: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
    """The members' flat {path: ShapeDtypeStruct}, after checking they can be averaged."""
    return _check(members, allow_base_mismatch=allow_base_mismatch)[1]


def _indexes(members) -> list[dict | None]:
    """Each member's OCDBT index (`rawread.index_or_none`), read once for the check and the plan."""
    return [rawread.index_or_none(ck.item_dir(step, "state")) for ck, step, _ in members]


def _lost_metadata(ck: Checkpointer, step: int) -> AverageError:
    return AverageError(f"member {ck.directory}: step {step} lists no arrays: its checkpoint "
                        "metadata (state/_METADATA or the OCDBT manifest) is missing or unreadable")


def _check(members: list[tuple[Checkpointer, int, dict]], *, allow_base_mismatch: bool = False,
           indexes: Sequence[dict | None] | None = None
           ) -> tuple[Any, dict[str, jax.ShapeDtypeStruct]]:
    """(member 0's array-metadata tree, its flat {path: ShapeDtypeStruct}) after checking every
    member against it. A member whose index (`rawread.describe`: one read instead of opening every
    array) lists exactly member 0's tree keys, arrays, shapes and dtypes passes; any other is
    compared leaf by leaf through orbax, which names the first difference."""
    indexes = _indexes(members) if indexes is None else indexes
    ref_ck, ref_step, ref_meta = members[0]
    template = ref_ck.array_metadata(ref_step)
    ref = flatten(template)
    if not ref:
        raise _lost_metadata(ref_ck, ref_step)
    ref_desc = rawread.describe(ref_ck.item_dir(ref_step, "state"), indexes[0])
    if ref_desc is not None and ref_desc[1] != {k.replace("/", "."): (tuple(x.shape), x.dtype)
                                                for k, x in ref.items()}:
        ref_desc = None  # the index and orbax disagree: compare through orbax only
    fp = ref_meta.get("base_fingerprint")
    for (ck, step, meta), index in zip(members[1:], indexes[1:]):
        same = ref_desc is not None and rawread.describe(ck.item_dir(step, "state"),
                                                         index) == ref_desc
        other = ref if same else flatten(ck.array_metadata(step))
        if not other:
            raise _lost_metadata(ck, step)
        if set(other) != set(ref):
            diff = sorted(set(other) ^ set(ref))[:5]
            raise AverageError(f"member {ck.directory}: parameter tree differs from "
                               f"{ref_ck.directory} (paths {diff})")
        for k, x in ref.items():
            y = other[k]
            if x.shape != y.shape or x.dtype != y.dtype:
                raise AverageError(f"member {ck.directory}: {k} is {y.shape} {y.dtype}, but "
                                   f"{x.shape} {x.dtype} in {ref_ck.directory}")
        if fp is None or meta.get("base_fingerprint") is None:
            msg = (f"member {ck.directory if fp is not None else ref_ck.directory} records no base "
                   "fingerprint, so a shared initialisation cannot be checked")
            if not allow_base_mismatch:
                raise AverageError(msg + " (allow_base_mismatch=True overrides)")
            log.warning("!!! %s — averaging anyway because allow_base_mismatch=True !!!", msg)
        elif meta.get("base_fingerprint") != fp:
            msg = (f"member {ck.directory} descends from base {meta.get('base_fingerprint')}, "
                   f"{ref_ck.directory} from {fp}: weight averaging needs one shared init")
            if not allow_base_mismatch:
                raise AverageError(msg + " (allow_base_mismatch=True overrides)")
            log.warning("!!! %s — averaging anyway because allow_base_mismatch=True !!!", msg)
    return template, ref


@jax.jit
def _scaled(x, w):
    return jax.tree.map(lambda b: w * b.astype(jnp.float32), x)


# the running sum is updated in place: its buffers are donated to the result
@functools.partial(jax.jit, donate_argnums=0)
def _accumulate(acc, x, w):
    return jax.tree.map(lambda a, b: a + w * b.astype(jnp.float32), acc, x)


def _direct_stores(ck: Checkpointer, step: int, leaves: dict[str, jax.ShapeDtypeStruct],
                   context) -> dict | None:
    """{path: tensorstore} of one member's arrays, opened straight on the OCDBT store orbax wrote
    (array `a/b/c` is the zarr array under key `a.b.c`); None if the layout is not that one, or an
    array's shape or dtype disagrees with the metadata: orbax then reads the member itself."""
    import tensorstore as ts
    base = {"driver": "ocdbt", "base": "file://" + ck.item_dir(step, "state")}
    try:
        keys = {k.decode() for k in ts.KvStore.open(base, context=context).result().list().result()}
        stores = {}
        for p, x in leaves.items():
            name = p.replace("/", ".")
            driver = ("zarr" if f"{name}/.zarray" in keys else
                      "zarr3" if f"{name}/zarr.json" in keys else None)
            if driver is None:
                return None
            store = ts.open({"driver": driver, "kvstore": dict(base, path=name + "/")},
                            open=True, read=True, context=context).result()
            if tuple(store.shape) != tuple(x.shape) or store.dtype.numpy_dtype != x.dtype:
                return None
            stores[p] = store
        return stores
    except Exception as e:  # noqa: BLE001 - any surprise: let orbax read it
        log.info("averaging: reading %s through orbax (%s)", ck.directory, e)
        return None


def _host_sum(members, leaves: dict[str, jax.ShapeDtypeStruct], w: Sequence[float],
              inflight_bytes: int, read_threads: int = 4, window_bytes: int = 8 << 20,
              indexes: Sequence[dict | None] | None = None, presum=None
              ) -> dict[str, np.ndarray] | None:
    """The weighted sum on the host: windows mapped straight from the files where every member is
    stored raw (`rawread`; reader threads bring them into the page cache ahead of the sum), else
    tensorstore reads of the members' whole arrays; None if neither applies."""
    indexes = _indexes(members) if indexes is None else indexes
    plans = [rawread.plan(ck.item_dir(step, "state"), leaves, index)
             for (ck, step, _), index in zip(members, indexes)]
    if all(pl is not None for pl in plans):
        if presum is not None:  # the command line's early sum of these very extents, if any
            acc = presum.result(plans, leaves, w)
            if acc is not None:
                return acc
        try:
            return hostsum.raw_sum(plans, leaves, w, inflight_bytes, read_threads, window_bytes)
        except OSError as e:  # a file shorter than its manifest says, unreadable, ...
            raise AverageError(f"reading the members failed: {e}") from None
    import tensorstore as ts
    context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
    stores = [_direct_stores(ck, step, leaves, context) for ck, step, _ in members]
    if all(s is not None for s in stores):
        def fetch(p, i, lo, hi):  # windows are whole rows: a slice of the first axis
            if not leaves[p].shape:
                return stores[i][p].read()
            row = hostsum.size_and_row(leaves[p].shape)[1]
            return stores[i][p][lo // row:hi // row].read()
        return hostsum.stream(fetch, leaves, w, inflight_bytes, window_bytes)
    return None


def stream_average(member_dirs: Sequence[str], weights: Sequence[float] | None = None, *,
                   shardings: Callable[[str], Any] | None = None, chunk_bytes: int = 128 << 20,
                   allow_base_mismatch: bool = False, presum=None) -> tuple[Any, dict]:
    """Σ_i w_i φ_i over member checkpoints, read in slices. Returns (state tree, meta).

    `shardings(path)` gives the sharding for a leaf (default: the first device). On one process
    without shardings, the members' arrays are mapped straight from the files orbax wrote
    (`rawread`; read through tensorstore where they are compressed), several in flight
    (`chunk_bytes` of them) on reader threads while numpy sums in place into 64-byte-aligned
    buffers that become the result's arrays without a copy: reads and summing overlap, and nothing
    but the sum and the reads in flight is held. Otherwise (or if a member's layout is not the
    expected one) orbax restores `chunk_bytes` of leaves per member at a time into a running sum
    updated in place on the leaves' devices. `presum`: a `presum.PreSum` started on these members
    (the command line's early sum), used where it summed exactly the extents planned here."""
    if not member_dirs:
        raise AverageError("no members to average")
    members = _open(member_dirs)
    indexes = _indexes(members)
    template, leaves = _check(members, allow_base_mismatch=allow_base_mismatch, indexes=indexes)
    w = normalise_weights(weights, len(members))
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]]
    treedef = jax.tree.structure(template)
    meta = {"members": [ck.directory for ck, _, _ in members], "weights": w,
            "member_steps": [s for _, s, _ in members],
            "base_fingerprint": members[0][2].get("base_fingerprint")}

    if shardings is None and jax.process_count() == 1:
        acc = _host_sum(members, leaves, w, chunk_bytes, indexes=indexes, presum=presum)
        if acc is not None:
            device = jax.local_devices()[0]
            out = [jax.device_put(acc.pop(p) if leaves[p].dtype == np.float32 else
                                  acc.pop(p).astype(leaves[p].dtype), device) for p in paths]
            return jax.tree.unflatten(treedef, out), meta

    def target(keep: set[str]):
        out = []
        for p in paths:
            x = leaves[p]
            if p in keep:
                sh = shardings(p) if shardings else None
                out.append(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh))
            else:
                out.append(ocp.PLACEHOLDER)
        return jax.tree.unflatten(treedef, out)

    acc: dict[str, jax.Array] = {}
    for chunk in hostsum.leaf_chunks(leaves, chunk_bytes):
        keep = set(chunk)
        for i, (ck, step, _) in enumerate(members):
            part = flatten(ck.restore_subset(step, target(keep)))
            part = {k: part[k] for k in chunk}
            if i == 0:
                acc.update(_scaled(part, w[0]))
            else:
                acc.update(_accumulate({k: acc[k] for k in chunk}, part, w[i]))
            del part
    out = jax.tree.unflatten(treedef, [acc[p].astype(leaves[p].dtype) for p in paths])
    return out, meta


def average_checkpoints(member_dirs: Sequence[str], out_dir: str,
                        weights: Sequence[float] | None = None, *, method: str = "uniform",
                        extra_meta: dict | None = None, **kw) -> str:
    """Average members into one checkpoint at `out_dir` (committed whole, or not at all).

    An existing output with the same members, weights, member steps and base fingerprint is kept
    (a rerun skips); any other existing output is an error rather than an overwrite or a silent
    reuse. A non-finite value in any member stops before anything is written, naming it."""
    w = normalise_weights(weights, len(member_dirs))
    created = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        return _average_locked(member_dirs, out_dir, w, method, extra_meta, kw)
    except LockedError:
        raise  # the directory is another process's: touch nothing
    except BaseException:
        if created:  # leave no trace of a failed average: only our lock file can be in it
            try:
                os.remove(os.path.join(out_dir, ".average.lock"))
                os.rmdir(out_dir)
            except OSError:
                pass
        raise


def _average_locked(member_dirs, out_dir, w, method, extra_meta, kw) -> str:
    # one writer per output, from the existence check to the commit: two processes averaging into
    # one directory would otherwise share orbax's temporary step and commit a mix of the two
    with output_lock(os.path.join(out_dir, ".average.lock"), f"the average {out_dir}"):
        if Checkpointer(out_dir, read_only=True).latest_step() is not None:
            _check_existing(out_dir, member_dirs, w)
            return out_dir
        t0 = time.perf_counter()
        state, meta = stream_average(member_dirs, w, **kw)
        t1 = time.perf_counter()
        meta.update(method=method, **(extra_meta or {}))
        if jax.process_count() > 1:  # each process summed into its own device: save host
            state = jax.tree.map(  # values, which orbax writes once (process 0), not per process
                lambda x: np.asarray(x) if x.is_fully_addressable and len(x.devices()) == 1
                else x, state)
        try:  # the save's own finite check (one pass over the average) refuses before writing
            Checkpointer(out_dir, max_to_keep=1).save(0, state, meta)
        except NonFiniteError:
            bad = nonfinite_leaves(state)
            raise AverageError(f"average for {out_dir}: non-finite values in {bad[:5]}; "
                               f"{_nonfinite_members(member_dirs, bad)}; nothing was "
                               "written") from None
        except (OSError, ValueError) as e:  # a full disk, a read-only directory, ...
            if isinstance(e, ValueError) and "space" not in str(e).lower():
                raise
            raise AverageError(f"writing the average to {out_dir} failed: "
                               f"{str(e).splitlines()[0][:300]}; nothing was committed") from None
    log.info("averaged %d members into %s: read and sum %.2f s, check and save %.2f s",
             len(member_dirs), out_dir, t1 - t0, time.perf_counter() - t1)
    return out_dir


def _check_existing(out_dir: str, member_dirs: Sequence[str], w: Sequence[float]) -> None:
    have = Checkpointer(out_dir, read_only=True).restore_meta()
    members = _open(member_dirs)
    now = {"members": [ck.directory for ck, _, _ in members],
           "member_steps": [s for _, s, _ in members],
           "base_fingerprint": members[0][2].get("base_fingerprint")}
    now["weights"] = list(w)
    stale = [k for k, v in now.items() if k != "weights" and have.get(k) != v]
    if len(have.get("weights", [])) != len(w) or not np.allclose(have["weights"], w):
        stale.append("weights")
    if not stale:
        return
    raise AverageError(f"{out_dir} already holds a different or stale average (differs in "
                       f"{stale}: {[have.get(k) for k in stale]} vs "
                       f"{[now[k] for k in stale]}); remove it to recompute, or choose another "
                       "output directory")


def _nonfinite_members(member_dirs: Sequence[str], paths: Sequence[str]) -> str:
    """Which members hold the non-finite tensors (read back for the message only)."""
    culprits = []
    for d in member_dirs:
        ck = Checkpointer(d, read_only=True)
        step = ck.latest_step()
        template = ck.array_metadata(step)
        want = set(paths)
        target = jax.tree_util.tree_map_with_path(
            lambda p, x: x if path_str(p) in want else ocp.PLACEHOLDER, template)
        bad = nonfinite_leaves(ck.restore_subset(step, target))
        if bad:
            culprits.append(f"member {d} has NaN/Inf in {bad[:3]}")
    return "; ".join(culprits) or "the weighted sum overflowed"
