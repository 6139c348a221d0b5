"""`python -m warm_jax.average OUT MEMBER [MEMBER ...] [--weights W ...]`: average checkpoints.

The command-line face of `soup.average_checkpoints` (the pipeline's `average` stage calls the same
function), for members trained elsewhere or averaged by hand, as one would run `mergekit-yaml`.
Before JAX and orbax are imported (about a second on a 2-core CPU) it starts threads that read the
members' arrays into the page cache (`rawread.cache`: `sendfile` to /dev/null, no copy into
Python, almost no CPU) in the order the average will read them, so the disk works while Python
imports and the members are checked; only what fits in half the available memory is read ahead.
(`posix_fadvise(WILLNEED)` read nothing ahead on the project's machine, and reading whole files
in file order made the average slower: it competed with the average's own reads.) Exit status 2 and one
line on stderr for members that cannot be averaged, with nothing written.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time


def _newest_step_files(member_dir: str) -> list[str]:
    try:
        steps = [int(n) for n in os.listdir(member_dir) if n.isdigit()]
    except OSError:
        return []
    if not steps:
        return []
    return [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(member_dir, str(max(steps))))
            for f in fs]


def _available_bytes() -> int:
    """MemAvailable (free memory plus reclaimable page cache), 0 where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _extents_in_read_order(member_dirs: list[str]) -> list:
    """The members' raw array extents (`rawread`) in the order the average reads them: array by
    array, each across members."""
    from warm_jax.average import rawread
    per_member = []
    for d in member_dirs:
        files = _newest_step_files(d)
        state = next((os.path.dirname(f) for f in files if f.endswith(os.sep + "_METADATA")
                      and os.path.basename(os.path.dirname(f)) == "state"), None)
        entries = rawread.read_index(state) if state else None
        if not entries:
            continue
        per_member.append({k: rawread.Extent(*rawread.locate(state, e["indirect_value"]))
                           for k, e in entries.items() if "indirect_value" in e})
    keys = sorted({k for m in per_member for k in m})
    return [m[k] for k in keys for m in per_member if k in m]


def prefetch(member_dirs: list[str], threads: int = 2) -> list[threading.Thread]:
    """Start reading the members' newest steps into the page cache, in the order the average will
    read them; returns the daemon threads. numpy and tensorstore are imported here, on the calling
    thread: importing numpy on two threads at once fails."""
    import tensorstore  # noqa: F401
    from warm_jax.average import rawread
    left = _available_bytes() // 2
    todo: list = []
    lock = threading.Lock()
    ready = threading.Event()

    def plan():
        nonlocal left
        try:
            for ext in _extents_in_read_order(member_dirs):
                if ext.length > left:
                    break
                left -= ext.length
                todo.append(ext)
        except Exception:  # noqa: BLE001 - a hint only: the average reports unreadable members
            pass
        finally:
            ready.set()

    def run(first: bool):
        if first:
            plan()
        ready.wait()
        while True:
            with lock:
                if not todo:
                    return
                ext = todo.pop(0)
            try:
                rawread.cache(ext)
            except OSError:
                pass

    out = [threading.Thread(target=run, args=(k == 0,), name=f"warm_jax-prefetch-{k}",
                            daemon=True) for k in range(threads)]
    for t in out:
        t.start()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m warm_jax.average", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("out", help="output checkpoint directory (must not hold another average)")
    ap.add_argument("members", nargs="+", help="member checkpoint directories (one shared init)")
    ap.add_argument("--weights", type=float, nargs="+", default=None,
                    help="one non-negative weight per member (normalised); default uniform")
    ap.add_argument("--allow-base-mismatch", action="store_true",
                    help="average members that record different base fingerprints (warns)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="say on stderr how long reading, summing and saving took")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    prefetch(args.members)
    if args.verbose:
        logging.basicConfig(format="%(message)s")
        logging.getLogger("warm_jax.average.soup").setLevel(logging.INFO)

    from warm_jax.average.soup import AverageError, average_checkpoints
    from warm_jax.layout import LockedError
    if args.verbose:
        print(f"imports {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    try:
        out = average_checkpoints(args.members, args.out, args.weights,
                                  allow_base_mismatch=args.allow_base_mismatch)
    except (AverageError, LockedError) as e:
        print(f"python -m warm_jax.average: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    code = main()
    # The average is committed (orbax's save is synchronous) and nothing else is pending: leave
    # without tearing down JAX and freeing the model (0.3 s of a 4 s average on a 2-core CPU).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
