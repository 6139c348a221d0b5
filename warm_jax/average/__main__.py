"""`python -m warm_jax.average OUT MEMBER [MEMBER ...] [--weights W ...]`: average checkpoints.

The command-line face of `warm_jax.average.average` (the pipeline's `average` stage calls
`soup.average_checkpoints`, the same function without the early sum), for members trained
elsewhere or averaged by hand, as one would run `mergekit-yaml`.
Before JAX and orbax are imported (about a second on a 2-core CPU) it forks a process that reads
the members' raw arrays and sums them (`presum`), so the disk and the sum work while Python
imports and the members are checked; the average uses that sum only where it matches what the
checks planned, and sums itself otherwise. Exit status 2 and one line on stderr for members that
cannot be averaged, with nothing written.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m warm_jax.average", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("out", help="output checkpoint directory (must not hold another average)")
    ap.add_argument("members", nargs="+", help="member checkpoint directories (one shared init)")
    ap.add_argument("--weights", type=float, nargs="+", default=None,
                    help="one non-negative weight per member (normalised); default uniform")
    ap.add_argument("--allow-base-mismatch", action="store_true",
                    help="average members that record different base fingerprints (warns)")
    ap.add_argument("--no-early-sum", action="store_true",
                    help="sum after the checks, in this process, instead of in a forked one")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="say on stderr how long reading, summing and saving took")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.verbose:
        logging.basicConfig(format="%(message)s")
        for name in ("warm_jax.average.soup", "warm_jax.average.presum"):
            logging.getLogger(name).setLevel(logging.INFO)
    from warm_jax.average import average   # the standard library only: its fork is clean
    try:
        out = average(args.members, args.out, args.weights, early_sum=not args.no_early_sum,
                      allow_base_mismatch=args.allow_base_mismatch)
    except Exception as e:  # noqa: BLE001 - only the two refusals below are the user's errors
        from warm_jax.average.soup import AverageError
        from warm_jax.layout import LockedError
        if not isinstance(e, (AverageError, LockedError)):
            raise
        print(f"python -m warm_jax.average: {e}", file=sys.stderr)
        return 2
    if args.verbose:
        print(f"average {time.perf_counter() - t0:.2f} s", file=sys.stderr)
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
