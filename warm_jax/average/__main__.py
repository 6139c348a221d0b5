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


def _refuse(msg: str) -> int:
    print(f"python -m warm_jax.average: {msg}", file=sys.stderr)
    return 2


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
    ap.add_argument("--base", help="Hugging Face members: the model they were fine-tuned from; "
                    "each must lie within relative distance 0.5 of it (hf_members)")
    ap.add_argument("--format", choices=("hf", "warm_jax"), default=None,
                    help="output of Hugging Face members: a Hugging Face directory (default) or "
                         "the project's checkpoint")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="say on stderr how long reading, summing and saving took")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.verbose:
        logging.basicConfig(format="%(message)s")
        for name in ("warm_jax.average.soup", "warm_jax.average.presum"):
            logging.getLogger(name).setLevel(logging.INFO)
    from warm_jax.average import average, is_hf_dir  # the standard library only: a clean fork
    real = [os.path.realpath(m) for m in args.members]
    twice = sorted({m for m, r in zip(args.members, real) if real.count(r) > 1})
    if twice:
        return _refuse(f"member given more than once: {twice}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return _refuse(f"output {args.out} exists and is not a directory")
    hf = [is_hf_dir(m) for m in args.members]
    if any(hf) and not all(hf):
        return _refuse(f"the members mix Hugging Face directories "
                       f"{[m for m, h in zip(args.members, hf) if h]} with warm_jax checkpoints")
    if not any(hf) and (args.base or args.format):
        return _refuse("--base and --format are for Hugging Face members")
    try:
        if any(hf):
            from warm_jax.average.hf_members import average_hf
            out = average_hf(args.members, args.out, args.weights, base=args.base,
                             out_format=args.format or "hf")
        else:
            out = average(args.members, args.out, args.weights, early_sum=not args.no_early_sum,
                          allow_base_mismatch=args.allow_base_mismatch)
    except Exception as e:  # noqa: BLE001 - only the two refusals below are the user's errors
        from warm_jax.average.soup import AverageError
        from warm_jax.guards import LockedError
        if not isinstance(e, (AverageError, LockedError)):
            raise
        return _refuse(str(e))
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
