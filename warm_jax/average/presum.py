"""The command line's early sum: the weighted sum starts in a forked process before JAX is imported.

`python -m warm_jax.average` spends about a second importing JAX and orbax and checking the
members; the sum itself needs only numpy and the members' raw bytes (`rawread`). So `PreSum.start`
forks first, with nothing but the standard library imported (no thread and no native library has
started yet, so the fork is clean), and the child sums the members' newest steps into a shared
memory file (`memfd`) while the parent imports and checks. The parent then asks for the sum
(`result`) with the extents and weights it planned itself, after every check `soup` makes; it uses
the child's buffers only where the child summed exactly those extents with exactly those weights,
and otherwise (a member changed, a layout `rawread` cannot read, any error in the child) it returns
None and `soup` sums as it would without it. The child writes nothing but that memory file, so a
killed average leaves nothing on disk; `cancel` stops a child that is no longer wanted.
"""
from __future__ import annotations

import logging
import mmap
import os
import pickle
import signal
import sys
import threading
from typing import NamedTuple, Sequence

log = logging.getLogger(__name__)

INFLIGHT_BYTES = 128 << 20  # windows read ahead of the sum, as `soup.stream_average`'s default


class _Leaf(NamedTuple):
    shape: tuple
    dtype: object


def newest_state_dir(member_dir: str) -> str | None:
    """`member_dir/<largest numeric step>/state`, or None."""
    try:
        steps = [int(n) for n in os.listdir(member_dir) if n.isdigit()]
    except OSError:
        return None
    return (os.path.join(os.path.abspath(member_dir), str(max(steps)), "state")  # as Checkpointer
            if steps else None)


class PreSum:
    """A weighted sum of member checkpoints computed by a child process (see the module doc)."""

    def __init__(self, pid: int, read_fd: int, memfd: int):
        self._pid, self._read_fd, self._memfd = pid, read_fd, memfd

    @classmethod
    def start(cls, member_dirs: Sequence[str], weights: Sequence[float] | None) -> PreSum | None:
        """Fork the child; `weights` as given to `soup.average_checkpoints`. None where the
        platform has no fork or memfd, or where it is too late to fork safely: another thread
        runs, or numpy, tensorstore or JAX (all of which start threads) is imported."""
        if not (hasattr(os, "fork") and hasattr(os, "memfd_create")):
            return None
        if threading.active_count() > 1 or {"numpy", "tensorstore", "jax"} & set(sys.modules):
            log.info("averaging: no early sum (threads or native libraries already started)")
            return None
        memfd = os.memfd_create("warm_jax-average")
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller's code
            code = 1
            try:
                os.close(read_fd)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _die_with(parent)
                _child(list(member_dirs), weights, memfd, write_fd)
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        return cls(pid, read_fd, memfd)

    def _wait(self) -> dict | None:
        chunks = []
        with os.fdopen(self._read_fd, "rb") as f:
            self._read_fd = None
            while chunk := f.read(1 << 20):
                chunks.append(chunk)
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        if status != 0 or not chunks:
            log.info("averaging: the early sum's process ended with status %d", status)
            return None
        return pickle.loads(b"".join(chunks))

    def result(self, plans: Sequence[dict], leaves: dict, weights: Sequence[float]):
        """{path: float32 array} of Σ_i w_i φ_i, if the child summed exactly `plans`' extents
        ({path: Extent} per member) of `leaves` ({path: shape/dtype}) with exactly `weights`;
        else None. Waits for the child."""
        import numpy as np
        if self._pid is None:
            return None
        got = self._wait()
        if got is None or got.get("error"):
            log.info("averaging: no early sum (%s)", got["error"] if got else "its process failed")
            return self._drop()
        names = {p: p.replace("/", ".") for p in leaves}
        same = (got["weights"] == list(weights) and len(got["plans"]) == len(plans)
                and set(got["layout"]) == set(names.values())
                and all(g.get(names[p]) == pl[p] for g, pl in zip(got["plans"], plans)
                        for p in leaves)
                and all(tuple(got["layout"][names[p]][1]) == tuple(x.shape) and
                        np.dtype(got["layout"][names[p]][2]) == np.dtype(x.dtype)
                        for p, x in leaves.items()))
        if same and _stats(got["plans"]) != got["stats"]:
            log.info("averaging: a member's data file changed while the early sum read it")
            return self._drop()
        if not same:
            log.info("averaging: the early sum read other members, extents or weights: unused")
            return self._drop()
        buf = mmap.mmap(self._memfd, got["total"])
        self._drop()  # the mapping keeps the sum
        out = {}
        for p, x in leaves.items():
            off = got["layout"][names[p]][0]
            n = int(np.prod(x.shape, dtype=np.int64))
            out[p] = np.frombuffer(buf, np.float32, count=n, offset=off).reshape(tuple(x.shape))
        log.info("averaging: used the early sum of %d members", len(plans))
        return out

    def _drop(self) -> None:
        """Close the memory file: an unused sum must not hold a model's worth of memory."""
        if self._memfd is not None:
            os.close(self._memfd)
            self._memfd = None

    def cancel(self) -> None:
        """Stop the child if it still runs (a failed check, an existing average) and free its
        sum unless `result` handed it out."""
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
            except OSError:
                pass
            self._pid = None
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
        self._drop()


def _die_with(parent: int) -> None:
    """Have the kernel kill this child when the parent dies (SIGKILL included), so a killed
    average leaves no process summing on; detach from the caller's stdin and stdout."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


def _stats(plans: list[dict]) -> dict:
    """{data file: (inode, size, mtime, ctime)} of every file the plans read: the parent uses the
    sum only if none changed between the child's reads and its own plan."""
    out = {}
    for pl in plans:
        for e in pl.values():
            if e.path is not None and e.path not in out:
                try:
                    st = os.stat(e.path)
                    out[e.path] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                except OSError:
                    out[e.path] = None
    return out


def _child(member_dirs: list[str], weights, memfd: int, write_fd: int) -> None:
    """Sum the members' newest steps into `memfd`; pickle {weights, plans, layout, total} or
    {error} to `write_fd`."""
    try:
        import numpy as np

        from warm_jax.average import hostsum, rawread
        states = [newest_state_dir(d) for d in member_dirs]
        if not states or None in states:
            raise ValueError("a member has no numbered step")
        n = len(states)
        # as soup does: average_checkpoints normalises, then stream_average again (same floats)
        w = hostsum.normalise_weights(hostsum.normalise_weights(weights, n), n)
        indexes = [rawread.index_or_none(s) for s in states]
        descs = [rawread.describe(s, i) for s, i in zip(states, indexes)]
        if descs[0] is None or any(d != descs[0] for d in descs):
            raise ValueError("the members' indexes are unreadable or differ")
        leaves = {name.replace(".", "/"): _Leaf(tuple(shape), np.dtype(dtype))
                  for name, (shape, dtype) in sorted(descs[0][1].items())}
        plans = [rawread.plan(s, leaves, i) for s, i in zip(states, indexes)]
        if None in plans:
            raise ValueError("a member is not stored raw")
        layout, total = {}, 0
        for p, x in leaves.items():
            total += -total % 64  # 64-byte aligned: JAX wraps such a buffer without a copy
            layout[p] = (total, x.shape, x.dtype)  # the members' dtype; the sum is float32
            total += int(np.prod(x.shape, dtype=np.int64)) * 4
        if total == 0:
            raise ValueError("nothing to sum")
        stats = _stats(plans)
        os.ftruncate(memfd, total)
        buf = mmap.mmap(memfd, total)

        def alloc(p, shape):
            off, _, _ = layout[p]
            return np.frombuffer(buf, np.float32, count=int(np.prod(shape, dtype=np.int64)),
                                 offset=off).reshape(shape)
        hostsum.raw_sum(plans, leaves, w, INFLIGHT_BYTES, alloc=alloc)
        if _stats(plans) != stats:
            raise ValueError("a member's data file changed while it was read")
        msg = {"weights": w, "total": total, "stats": stats,
               "layout": {p.replace("/", "."): v for p, v in layout.items()},
               "plans": [{p.replace("/", "."): e for p, e in pl.items()} for pl in plans]}
    except Exception as e:  # noqa: BLE001 - the parent then sums itself and reports any error
        msg = {"error": repr(e)}
    with os.fdopen(write_fd, "wb") as f:
        f.write(pickle.dumps(msg))
