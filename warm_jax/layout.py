"""The run directory: every path a stage reads or writes, and how files other than checkpoints are
written into it.

One `RunLayout(workdir)` names every output (stages meet only through these files):
  pretrain/  sft/                       checkpoints + train.jsonl (sft also eval.jsonl)
  ood/pairs.npz  ood/summary.jsonl      the sampled OOD preference split (warm_jax.ood)
  rm/<name>/train/population/           the S x M members of every chain seed, one program
  rm/<name>/seed_<s>/linear_probe/  train/member_<i>/  members/member_<i>/  averages/<method>/
  rm/<name>/seed_<s>/eval.jsonl  analysis.jsonl          (chain seed s: `chain(name, s)`)
  rl/<rm>/bon.jsonl (rows tagged by seed)
  rl/<rm>/<method>/{checkpoints, train.jsonl, eval.jsonl, final.jsonl, eval_samples.npz}
  config.gin  operative_config.gin  run_info.json  timings.json  report.md  claims.json  figures/

Files that are not orbax checkpoints are written whole or not at all (temporary file, fsync,
rename) and only by process 0 under `jax.distributed`; orbax saves stay collective. Locks (`flock`)
cover the outputs a launch writes, so a second launch onto them fails at once, while launches with
disjoint outputs (one RM member each) run side by side. Each stage records the configuration that
feeds it and refuses to resume or skip under a different one.

`kill_point(name)` is the fault-injection hook the kill tests use: `WARM_JAX_KILL_AT=name[#n][@ms]`
makes the process SIGKILL itself the n-th time it reaches `name` (after `ms` milliseconds, from a
thread, so the kill lands inside the operation that follows). `WARM_JAX_FAULT=enospc:<substring>`
makes atomic writes to matching paths fail as a full disk would.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
from typing import Any, Callable, Iterable, Mapping

log = logging.getLogger(__name__)


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
    from warm_jax.metrics import plain
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


# --- reward specs ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """A reward function by name: `single | warm_M<k> | greedy | ens | wco | uwo`, where an
    ensemble may name its size (`ens_M2`: the ensemble of the k members `warm_M<k>` averages)."""
    kind: str          # single, warm, greedy, ens, wco, uwo
    m: int | None = None

    ENSEMBLES = ("ens", "wco", "uwo")
    ALLOWED = "single | warm_M<k> | greedy | ens | wco | uwo | ens_M<k> | wco_M<k> | uwo_M<k>"

    @classmethod
    def parse(cls, text: str) -> "RewardSpec":
        m = re.fullmatch(r"(warm|ens|wco|uwo)_M([1-9]\d*)", text)
        if m:
            return cls(m.group(1), int(m.group(2)))
        if text in ("single", "greedy") + cls.ENSEMBLES:
            return cls(text)
        raise ValueError(f"reward {text!r}: allowed {cls.ALLOWED}")

    def __str__(self) -> str:
        return self.kind if self.m is None else f"{self.kind}_M{self.m}"

    @property
    def is_ensemble(self) -> bool:
        return self.kind in self.ENSEMBLES

    @property
    def average(self) -> str | None:
        """The averaged checkpoint it reads (`single` is the best member: the top-1 average); an
        ensemble of k members reads the members `warm_M<k>` averages."""
        if self.is_ensemble:
            return None if self.m is None else f"warm_M{self.m}"
        return "warm_M1" if self.kind == "single" else str(self)


# --- chain seeds ----------------------------------------------------------------------------------
# A run's seeds are an axis of its programs: chain seed s has its own training-label draw, RM
# population, averages, best-of-N samples and RL runs, under `rm/<name>/seed_<s>/` and in rows
# tagged `seed`. Pretraining and SFT are shared by every chain seed.

def chain(name: str, seed: int) -> str:
    """The reward-model name of chain seed `seed` of `name` (a subdirectory of rm/<name>)."""
    return f"{name}/seed_{int(seed)}"


def chain_seed(base: int, seed: int) -> int:
    """The random seed a chain uses where the run used `base` (chain seed 0 keeps `base`)."""
    return int(base) + 10_007 * int(seed)


def check_seeds(where: str, seeds) -> tuple[int, ...]:
    out = tuple(int(s) for s in seeds)
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise ValueError(f"{where}: seeds={tuple(seeds)!r}: need distinct integers >= 0, at least one")
    return out


# --- the layout ------------------------------------------------------------------------------------

class RunLayout:
    """Every path under one work directory."""

    def __init__(self, workdir: str):
        self.root = os.path.abspath(workdir)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    # run-level files
    config_gin = property(lambda self: self.path("config.gin"))
    operative_gin = property(lambda self: self.path("operative_config.gin"))
    run_info = property(lambda self: self.path("run_info.json"))
    timings = property(lambda self: self.path("timings.json"))
    report = property(lambda self: self.path("report.md"))
    claims = property(lambda self: self.path("claims.json"))
    figures = property(lambda self: self.path("figures"))
    tokenizer = property(lambda self: self.path("tokenizer.json"))

    # shared initialisation
    pretrain = property(lambda self: self.path("pretrain"))
    sft = property(lambda self: self.path("sft"))
    imported = property(lambda self: self.path("import"))
    # the sampled OOD preference split (warm_jax.ood)
    ood = property(lambda self: self.path("ood"))
    ood_pairs = property(lambda self: self.path("ood", "pairs.npz"))
    ood_summary = property(lambda self: self.path("ood", "summary.jsonl"))

    @staticmethod
    def checkpoints(stage_dir: str) -> str:
        return os.path.join(stage_dir, "checkpoints")

    # reward models
    def rm(self, name: str) -> str:
        return self.path("rm", name)

    def linear_probe(self, name: str) -> str:
        return os.path.join(self.rm(name), "linear_probe")

    def rm_train(self, name: str, run: str) -> str:
        """`run`: 'population' or 'member_<i>'."""
        return os.path.join(self.rm(name), "train", run)

    def member(self, name: str, i: int) -> str:
        return os.path.join(self.rm(name), "members", f"member_{i}")

    def average(self, name: str, method: str) -> str:
        return os.path.join(self.rm(name), "averages", method)

    def member_done(self, name: str, i: int) -> bool:
        from warm_jax.checkpoint import Checkpointer
        d = self.member(name, i)
        return os.path.isdir(d) and Checkpointer(d, read_only=True).latest_step() is not None

    def member_dirs(self, name: str) -> list[str]:
        """The exported members 0, 1, … (stops at the first missing one)."""
        out, i = [], 0
        while self.member_done(name, i):
            out.append(self.member(name, i))
            i += 1
        if not out:
            raise FileNotFoundError(f"no trained members under {self.rm(name)}/members")
        return out

    # policies
    def rl(self, rm_name: str) -> str:
        return self.path("rl", rm_name)

    def rl_method(self, rm_name: str, method: str) -> str:
        return os.path.join(self.rl(rm_name), method)

    def calibration(self, name: str) -> str:
        """One round of the RL-regime calibration (warm_jax.rl.calibrate)."""
        return self.path("calibration", name)

    def bon(self, rm_name: str) -> str:
        return os.path.join(self.rl(rm_name), "bon.jsonl")

    # locks
    def lock(self, output: str, *, wait: bool = False):
        """Lock one output (a path relative to the work directory, or absolute inside it)."""
        rel = os.path.relpath(os.path.join(self.root, output), self.root)
        return output_lock(self.path(".locks", rel.replace(os.sep, "__") + ".lock"),
                           f"{self.root}/{rel}", wait=wait)

    def locks(self, outputs: Iterable[str]):
        stack = contextlib.ExitStack()
        try:
            for o in sorted(set(outputs)):
                stack.enter_context(self.lock(o))
        except BaseException:
            stack.close()
            raise
        return stack

    @contextlib.contextmanager
    def stage(self, stage: str, stage_dir: str, config: Mapping[str, Any], *,
              outputs: Iterable[str] | None = None):
        """Enter a stage: lock its outputs (default: its directory), then check or record the
        configuration that feeds it."""
        with self.locks(outputs if outputs is not None else [stage_dir]):
            check_stage_config(stage_dir, stage, config)
            yield

    def update_timings(self, name: str, seconds: float) -> dict:
        """Read-modify-write of timings.json under a short lock (side-by-side launches share it)."""
        with self.lock("timings.json", wait=True):
            try:
                timings = read_json(self.timings, {})
            except ValueError as e:
                log.warning("%s; starting the timings afresh", e)
                timings = {}
            timings[name] = round(seconds, 2)
            write_json(self.timings, timings)
        return timings
