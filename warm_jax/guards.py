"""What keeps two launches, a SIGTERM and a changed configuration from mixing a run's outputs.

Locks (`flock`) cover the outputs a launch writes, so a second launch onto them fails at once, while
launches with disjoint outputs (one RM member each) run side by side. Each stage records the
configuration that feeds it (`check_stage_config`) and refuses to resume or skip under a different
one. SIGTERM sets a flag that training loops check at their next safe point (`Preempted`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Mapping

from warm_jax.fileio import is_writer, read_json, write_json

log = logging.getLogger(__name__)


# --- locks -----------------------------------------------------------------------------------------

class LockedError(RuntimeError):
    pass


_held: dict[str, int] = {}  # lock path -> fd, held by this process
_hold_until_exit = False


def hold_locks_until_exit() -> None:
    """For a launch (`warm_jax.main`): output locks stay held until the process ends, so a second
    launch onto the same work directory fails at its first stage, not between two stages of the
    first. Waiting locks (shared, idempotent outputs) are still released at once."""
    global _hold_until_exit
    _hold_until_exit = True


@contextlib.contextmanager
def output_lock(path: str, what: str, *, wait: bool = False):
    """Hold an exclusive lock on `path` (a `.lock` file) while writing `what`. Another holder makes
    this fail at once, or, with `wait=True` (shared, idempotent outputs), wait for it. Re-entrant
    within a process; a no-op on processes other than 0."""
    if not is_writer() or path in _held:
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise LockedError(f"{what} is being written by another launch ({holder}; lock "
                              f"{path}). Wait for it to finish, or give this launch another "
                              "WORKDIR.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}".encode(), 0)
        _held[path] = fd
        yield
    except BaseException:
        _held.pop(path, None)
        os.close(fd)  # closing releases the flock
        raise
    if wait or not _hold_until_exit:
        _held.pop(path, None)
        os.close(fd)


# --- stage configurations --------------------------------------------------------------------------

class StageConfigError(ValueError):
    pass


def canonical(obj: Any) -> Any:
    """A JSON-able description of a stage argument: dataclasses by fields, tasks by their config."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # a field added after runs were recorded (metadata record_if_set) is described only when
        # it differs from its default, so those runs' recorded configurations still match
        return {"_type": type(obj).__name__,
                **{f.name: canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                   if not (f.metadata.get("record_if_set") and getattr(obj, f.name) == f.default)}}
    if hasattr(obj, "cfg") and dataclasses.is_dataclass(obj.cfg):
        return {"_type": type(obj).__name__, "cfg": canonical(obj.cfg)}
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return float(obj)
    if callable(obj):
        return getattr(obj, "__qualname__", repr(obj))
    return repr(obj)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: d}


def check_stage_config(stage_dir: str, stage: str, config: Mapping[str, Any]) -> None:
    """Record the configuration feeding `stage_dir`, or stop if it differs from the recorded one."""
    now = canonical(dict(config))
    digest = hashlib.sha256(json.dumps(now, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(stage_dir, "stage_config.json")
    saved = read_json(path)
    if saved is None:
        write_json(path, {"stage": stage, "hash": digest, "config": now})
        return
    if saved.get("hash") == digest:
        return
    a, b = _flat(saved.get("config", {})), _flat(now)
    diffs = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
             for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]
    raise StageConfigError(
        f"stage {stage}: {stage_dir} was made with another configuration; differing fields: "
        f"{'; '.join(diffs[:12]) or '(none readable)'}. Resuming would mix the two. To start "
        f"this stage afresh remove {stage_dir} (and the outputs of later stages), or run into "
        "another WORKDIR.")


# --- preemption ------------------------------------------------------------------------------------

class Preempted(RuntimeError):
    """SIGTERM arrived; the run saved at a safe point and stops (rerun the command to resume)."""


_preempt = threading.Event()


def install_preemption_handler() -> None:
    """SIGTERM sets a flag that training loops check at their next safe point."""
    def handler(signum, frame):
        log.warning("SIGTERM: saving at the next safe point, then stopping")
        _preempt.set()
    signal.signal(signal.SIGTERM, handler)


def preemption_requested() -> bool:
    return _preempt.is_set()


def clear_preemption() -> None:
    """Forget a SIGTERM (a test that preempted a run in-process resumes it)."""
    _preempt.clear()
