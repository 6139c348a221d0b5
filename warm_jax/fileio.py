"""How files other than orbax checkpoints are written: whole or not at all (temporary file, fsync,
rename), and only by process 0 under `jax.distributed` (orbax saves stay collective).

`kill_point(name)` is the fault-injection hook the kill tests use: `WARM_JAX_KILL_AT=name[#n][@ms]`
makes the process SIGKILL itself the n-th time it reaches `name` (after `ms` milliseconds, from a
thread, so the kill lands inside the operation that follows). `WARM_JAX_FAULT=enospc:<substring>`
makes atomic writes to matching paths fail as a full disk would.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import sys
import threading
from typing import Any, Callable, Iterable, Mapping

import numpy as np


def plain(v: Any) -> Any:
    """A JSON-able value of a number or array (jax, numpy or Python)."""
    if isinstance(v, (np.generic, np.ndarray)) or hasattr(v, "__array__"):
        arr = np.asarray(v)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return v


# --- who writes ------------------------------------------------------------------------------------

def is_writer() -> bool:
    """Process 0 writes the shared files; every process takes part in orbax saves."""
    import jax
    return jax.process_index() == 0


# --- fault injection (tests) -----------------------------------------------------------------------

_hits: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process here if `WARM_JAX_KILL_AT` names this point (see the module doc)."""
    spec = os.environ.get("WARM_JAX_KILL_AT")
    if not spec:
        return
    m = re.fullmatch(r"([\w.]+)(?:#(\d+))?(?:@(\d+))?", spec)
    if not m or m.group(1) != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != int(m.group(2) or 1):
        return
    delay_ms = m.group(3)
    sys.stderr.write(f"kill_point: SIGKILL at {name} (hit {_hits[name]})\n")
    sys.stderr.flush()
    if delay_ms is None:
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Timer(int(delay_ms) / 1000, os.kill, (os.getpid(), signal.SIGKILL)).start()


def _injected_enospc(path: str) -> bool:
    spec = os.environ.get("WARM_JAX_FAULT", "")
    return spec.startswith("enospc:") and spec[len("enospc:"):] in path


# --- atomic files ----------------------------------------------------------------------------------

class WriteError(OSError):
    pass


def atomic_write(path: str, data: bytes | str | Callable[[Any], None]) -> None:
    """Write `path` whole or not at all: temporary file, fsync, rename, fsync of the directory.
    `data` may be a callable that writes into a binary file object. Process 0 only."""
    if not is_writer():
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temps(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            if _injected_enospc(path):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        kill_point("write.tmp")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        hint = " (the disk is full: free space and rerun)" if e.errno == errno.ENOSPC else ""
        raise WriteError(e.errno, f"could not write {path}: {e.strerror or e}{hint}; "
                                  "the previous version, if any, is unchanged") from None
    _fsync_dir(directory)


def _remove_stale_temps(path: str) -> None:
    """Temporary files of this path left by a killed writer (its pid no longer runs)."""
    import glob
    for tmp in glob.glob(glob.escape(path) + ".tmp-*"):
        pid = tmp.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
            except PermissionError:
                pass


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """A whole JSONL file at once (evaluation tables): never appended to."""
    atomic_write(path, "".join(json.dumps({k: plain(v) for k, v in r.items()}, allow_nan=True)
                               + "\n" for r in rows))


def read_json(path: str, default: Any = None) -> Any:
    """A JSON file written by `write_json`; `default` if absent. A damaged file is named."""
    if not os.path.exists(path):
        return default
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); remove it to start that part afresh") \
            from None
