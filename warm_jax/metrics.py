"""One metrics writer (JSONL + TensorBoard events).

Training logs are append-only and survive a kill: a resumed run first rewinds its log to the step
it restored (`MetricsWriter.rewind`), dropping rows logged after that checkpoint and a torn last
line, so no (step, run) row is ever duplicated. `read_jsonl` names the path and line of a bad row.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping

from warm_jax.fileio import is_writer, plain, write_jsonl

log = logging.getLogger(__name__)


class MetricsWriter:
    """Appends `{"step": s, **metrics}` lines to `<dir>/<name>.jsonl`; scalars also go to
    TensorBoard. Under `jax.distributed` only process 0 writes."""

    def __init__(self, directory: str, name: str = "metrics", *, tensorboard: bool = True):
        self.path = os.path.join(directory, f"{name}.jsonl")
        self._writer = is_writer()
        self._file = self._tb = None
        if not self._writer:
            return
        os.makedirs(directory, exist_ok=True)
        self._drop_torn_tail()
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(directory, "tb", name))

    def _drop_torn_tail(self) -> None:
        """A kill mid-write leaves a last line without its newline: drop it, with a warning."""
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            keep = data[:data.rfind(b"\n") + 1]
            log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run",
                        self.path, len(data) - len(keep))
            f.seek(0)
            f.truncate(0)
            f.write(keep)

    def rewind(self, step: int, keep: Any = None) -> None:
        """Keep only rows with `step <= step` (the restored checkpoint's), atomically; `keep(row)`
        may spare other rows too. Call on every (re)start, before writing."""
        if not self._writer:
            return
        rows = read_jsonl(self.path) if os.path.exists(self.path) else []
        kept = [r for r in rows if r["step"] <= step or (keep is not None and keep(r))]
        if len(kept) == len(rows):
            return
        log.info("%s: rewinding to step %d (%d rows dropped)", self.path, step,
                 len(rows) - len(kept))
        self._file.close()
        write_jsonl(self.path, kept)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self._writer:
            return
        row = {"step": int(step), **{k: plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row, allow_nan=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path: str) -> list[dict]:
    """Every row of a JSONL file. A torn last line (no newline: an interrupted writer) is dropped
    with a warning; any other bad line is an error naming `path:line`."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    rows = []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
        except (ValueError, UnicodeDecodeError) as e:
            if i == len(lines):  # the last line, without its newline: torn by a kill
                log.warning("%s:%d: dropping a torn last line", path, i)
                break
            raise ValueError(f"{path}:{i}: bad JSONL row: {e}") from None
        rows.append(row)
    return rows

