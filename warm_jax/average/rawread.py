"""Byte-range reads of the raw arrays in an orbax checkpoint, at the disk's speed.

warm_jax writes checkpoints uncompressed (`checkpoint._uncompressed_handler`), so each array of a
step's `state` item is one zarr-v2 chunk stored as plain little-endian bytes inside orbax's OCDBT
database. `plan` asks tensorstore's public `ocdbt.dump` where each chunk lies (data file, offset,
length) and checks the array's `.zarray` (zarr v2 spec: no compressor, no filters, C order, one
chunk, the expected shape and dtype). `cache` then has the kernel read an extent into the page cache
(`sendfile` to /dev/null: no copy into the process, almost no CPU, threads in parallel with the GIL
released), and `mapped` shows those bytes as a read-only numpy array over the page cache (`mmap`):
no decode and no copy, which on a 2-core CPU is the difference between the disk's speed and half
of it. Anything else (compressed or chunked arrays, a deeper B-tree, another layout) makes `plan`
return None and the caller reads through tensorstore or orbax instead, so this is only ever a fast
path, never a second format. Like any reader of mapped files, it needs members that are not
rewritten in place while they are averaged: a data file truncated under the mapping ends the
process with SIGBUS (nothing is committed; orbax itself never rewrites a committed step).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import mmap
import os

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Extent:
    """Where one array's bytes are: `length` bytes at `offset` of `path`, or `inline` bytes."""
    path: str | None
    offset: int
    length: int
    inline: bytes | None = None


def _key(k) -> str:
    return k.decode() if isinstance(k, bytes) else str(k)


def locate(state_dir: str, ref: str) -> tuple[str, int, int]:
    """'value:ocdbt.process_0/:d/<file>:<offset>:<length>' -> (absolute path, offset, length)."""
    loc, offset, length = ref.rsplit(":", 2)
    if not loc.startswith("value:"):
        raise ValueError(f"unexpected OCDBT value reference {ref!r}")
    prefix, rel = loc[len("value:"):].split(":", 1)
    return os.path.join(state_dir, prefix + rel), int(offset), int(length)


def read_index(state_dir: str) -> dict[str, dict] | None:
    """The entries of the item's OCDBT index ({key: entry}), or None if it has more than one
    level (or none)."""
    import tensorstore as ts
    kv = ts.KvStore.open({"driver": "file", "path": state_dir.rstrip("/") + "/"}).result()
    manifest = ts.ocdbt.dump(kv).result()
    version = (manifest.get("versions") or [None])[-1]
    if not version or version.get("root_height", 0) != 0 or "location" not in version["root"]:
        return None
    return {_key(e["key"]): e
            for e in ts.ocdbt.dump(kv, version["root"]["location"]).result()["entries"]}


_READ = object()  # default of `index`: read it from the disk


def index_or_none(state_dir: str) -> dict[str, dict] | None:
    """`read_index`, or None (logged) when it cannot be read: to read it once and pass it on."""
    try:
        return read_index(state_dir)
    except Exception as e:  # noqa: BLE001 - the callers then take the slower ways
        log.info("averaging: no OCDBT index for %s (%r)", state_dir, e)
        return None


def describe(state_dir: str, index=_READ) -> tuple[frozenset, dict[str, tuple]] | None:
    """(orbax's tree keys, {array name 'a.b.c': (shape, dtype)}) of an item, from its `_METADATA`
    and one read of its OCDBT index: the same facts `Checkpointer.array_metadata` gathers by opening
    every array, for comparing members cheaply. None when either is unavailable. `index`: the item's
`read_index`, if already read."""
    try:
        with open(os.path.join(state_dir, "_METADATA")) as f:
            tree_keys = frozenset(json.load(f)["tree_metadata"])
        entries = read_index(state_dir) if index is _READ else index
        if entries is None:
            return None
        arrays = {}
        for k, e in entries.items():
            if k.endswith("/.zarray") and "inline_value" in e:
                z = json.loads(e["inline_value"])
                arrays[k[:-len("/.zarray")]] = (tuple(z["shape"]), np.dtype(z["dtype"]))
        return tree_keys, arrays
    except Exception as e:  # noqa: BLE001 - the caller compares through orbax instead
        log.info("averaging: no index description of %s (%r)", state_dir, e)
        return None


def plan(state_dir: str, leaves: dict, index=_READ) -> dict[str, Extent] | None:
    """{path: Extent} for every leaf ({'params/body/w': ShapeDtypeStruct}) of the orbax item at
    `state_dir`, or None (with the reason logged) when any leaf is not a single raw chunk.
    `index`: the item's `read_index`, if already read."""
    try:
        entries = read_index(state_dir) if index is _READ else index
        if entries is None:
            return _no(state_dir, "an empty or multi-level OCDBT B-tree")
        out = {}
        for p, x in leaves.items():
            name = p.replace("/", ".")
            meta = entries.get(f"{name}/.zarray", {}).get("inline_value")
            if meta is None:
                return _no(state_dir, f"{p} is not a zarr v2 array")
            z = json.loads(meta)
            shape, dtype = tuple(x.shape), np.dtype(x.dtype)
            if (z.get("zarr_format") != 2 or z.get("compressor") is not None or z.get("filters")
                    or z.get("order") != "C" or tuple(z.get("shape", ())) != shape
                    or tuple(z.get("chunks", ())) != shape or np.dtype(z["dtype"]) != dtype
                    or np.dtype(z["dtype"]).byteorder == ">"):
                return _no(state_dir, f"{p} is compressed, chunked or not {shape} {dtype}: {z}")
            chunk = entries.get(f"{name}/" + (".".join("0" * len(shape)) or "0"))
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if chunk is None:
                return _no(state_dir, f"{p} has no stored chunk")
            if "inline_value" in chunk:
                ext = Extent(None, 0, len(chunk["inline_value"]), bytes(chunk["inline_value"]))
            else:
                ext = Extent(*locate(state_dir, chunk["indirect_value"]))
            if ext.length != nbytes:
                return _no(state_dir, f"{p} holds {ext.length} bytes, not {nbytes}")
            out[p] = ext
        return out
    except Exception as e:  # noqa: BLE001 - any surprise: the caller reads another way
        return _no(state_dir, repr(e))


def _no(state_dir: str, why: str) -> None:
    log.info("averaging: no byte-range reads for %s (%s)", state_dir, why)
    return None


def _check_size(ext: Extent, fd: int) -> None:
    size = os.fstat(fd).st_size
    if size < ext.offset + ext.length:
        raise OSError(f"{ext.path} holds {size} bytes, but an array lies at bytes "
                      f"{ext.offset}..{ext.offset + ext.length}: the checkpoint is truncated")


def cache(ext: Extent, start: int = 0, length: int | None = None) -> None:
    """Have the kernel read `length` bytes of the extent from byte `start` (default: all of it)
    into the page cache, with no copy into this process."""
    if ext.inline is not None:
        return
    length = ext.length - start if length is None else length
    fd = os.open(ext.path, os.O_RDONLY)
    try:
        _check_size(ext, fd)
        with open(os.devnull, "wb", buffering=0) as sink:
            done = 0
            while done < length:
                n = os.sendfile(sink.fileno(), fd, ext.offset + start + done, length - done)
                if n <= 0:
                    raise OSError(f"{ext.path} ended at byte {ext.offset + start + done}")
                done += n
    finally:
        os.close(fd)


class Mapped:
    """Elements [lo, hi) of an extent's flat array as a read-only numpy view (`.array`); `close()`
    unmaps it, after which the array must not be used. Only mapped windows count towards the
    process's resident memory."""

    def __init__(self, ext: Extent, dtype, lo: int, hi: int):
        dtype = np.dtype(dtype)
        self._mm = None
        if ext.inline is not None:
            self.array = np.frombuffer(ext.inline, dtype)[lo:hi]
            return
        if hi <= lo:
            self.array = np.empty(0, dtype)
            return
        begin = ext.offset + lo * dtype.itemsize
        start = begin - begin % mmap.ALLOCATIONGRANULARITY
        fd = os.open(ext.path, os.O_RDONLY)
        try:
            _check_size(ext, fd)
            self._mm = mmap.mmap(fd, begin + (hi - lo) * dtype.itemsize - start,
                                 access=mmap.ACCESS_READ, offset=start)
        finally:
            os.close(fd)
        self.array = np.frombuffer(self._mm, dtype, count=hi - lo, offset=begin - start)

    def close(self) -> None:
        self.array = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None


def mapped(ext: Extent, dtype, lo: int, hi: int, *, warm: bool = True) -> Mapped:
    """Elements [lo, hi) of the extent as a `Mapped` window, read into the page cache first if
    `warm` (for a reader thread, so that the caller's first touch does not wait on the disk)."""
    if warm:
        item = np.dtype(dtype).itemsize
        cache(ext, lo * item, (hi - lo) * item)
    return Mapped(ext, dtype, lo, hi)
