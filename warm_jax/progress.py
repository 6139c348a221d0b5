"""Where a long run is: progress with elapsed time and ETA for every loop that takes a while, as a
bar in a terminal and, when the output is piped to a file, as one line at the start, about every
10% and at the end. It also counts the loops a process has started, so that the launch can tell a
stage that did work from one it skipped (finished earlier, same configuration)."""
from __future__ import annotations

import sys
import time
from typing import Iterable

from tqdm.auto import tqdm

_started = 0   # loops started in this process (`work_started`)
_before_work: list = []   # called once, just before the first unit of work


def work_started() -> int:
    """How many progress loops (units of work) this process has started."""
    return _started


def before_first_work(fn) -> None:
    """Call `fn()` once, just before this process starts its first unit of work (the launch
    writes its record then: a launch refused before any work changes nothing)."""
    _before_work.append(fn)


def _count() -> None:
    global _started
    while _before_work:
        _before_work.pop(0)()
    _started += 1


def note_work() -> None:
    """Count work a stage does without a progress loop (a report, say), before it does it."""
    _count()


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _Lines:
    """The piped form: a line at the start, whenever another ~10% is done, and at the end."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None, initial: int):
        self.iterable, self.desc, self.initial = iterable, desc, initial
        self.total = total if total is not None else (len(iterable) + initial
                                                      if hasattr(iterable, "__len__") else None)

    def _line(self, done: int, t0: float) -> None:
        elapsed = time.time() - t0
        if self.total:
            pct = 100 * done / self.total
            rate = (done - self.initial) / elapsed if elapsed > 0 else 0.0
            eta = (f", ETA {hms((self.total - done) / rate)}" if rate > 0 and done < self.total
                   else "")
            print(f"  {self.desc}: {pct:3.0f}% ({done}/{self.total}), {hms(elapsed)} elapsed"
                  f"{eta}", flush=True)
        else:
            print(f"  {self.desc}: {done} done, {hms(elapsed)} elapsed", flush=True)

    def __iter__(self):
        t0, done, next_pct = time.time(), self.initial, 0.0
        if self.total:
            next_pct = 100 * done / self.total + 10
        self._line(done, t0)
        for item in self.iterable:
            yield item
            done += 1
            if self.total and 100 * done / self.total >= next_pct and done < self.total:
                self._line(done, t0)
                next_pct = 100 * done / self.total + 10
        if done > self.initial:
            self._line(done, t0)


def progress(iterable: Iterable, *, desc: str, total: int | None = None, initial: int = 0):
    """`iterable` with progress: a tqdm bar (elapsed, ETA) in a terminal, lines when piped."""
    if not hasattr(iterable, "__len__") or len(iterable):   # an empty loop is no work
        _count()
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, initial=initial, dynamic_ncols=True)
    return _Lines(iterable, desc, total, initial)
