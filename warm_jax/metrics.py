"""One metrics writer (JSONL + TensorBoard events) and quiet-when-piped progress bars."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Iterable, Mapping

import numpy as np
from tqdm.auto import tqdm


def _plain(v: Any) -> Any:
    if isinstance(v, (np.generic, np.ndarray)) or hasattr(v, "__array__"):
        arr = np.asarray(v)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return v


class MetricsWriter:
    """Appends `{"step": s, **metrics}` lines to `<dir>/<name>.jsonl`; scalars also go to TensorBoard."""

    def __init__(self, directory: str, name: str = "metrics", *, tensorboard: bool = True):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{name}.jsonl")
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(directory, "tb", name))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row, allow_nan=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def progress(iterable: Iterable, **kw):
    """tqdm that stays silent when stderr is not a terminal (CI logs, subprocess runners)."""
    return tqdm(iterable, disable=not sys.stderr.isatty(), dynamic_ncols=True, **kw)
