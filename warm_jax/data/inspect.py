"""Check a preference file before a long run: load it the way training does, print a JSON summary.

    python -m warm_jax.data.inspect PATH [--format hh|tldr|jsonl|auto] [--max_prompt_tokens 256]
        [--max_response_tokens 128] [--tokenizer tokenizer.json] [--on_identical skip|error] ...

Exit status 0 with the summary on stdout; on bad input, non-zero with `file:line: reason` on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from warm_jax.data.conversations import chat_template_of
from warm_jax.data.preferences import FORMATS, DataError, LoadPolicy, encode_pairs, read_preferences
from warm_jax.data.tokenizer import ByteTokenizer, JsonTokenizer


def _percentiles(xs) -> dict:
    p = np.percentile(np.asarray(xs), [0, 50, 90, 99, 100])
    return dict(zip(["min", "p50", "p90", "p99", "max"], [int(round(v)) for v in p]))


def inspect(path: str, fmt: str = "auto", *, max_prompt_tokens: int = 256,
            max_response_tokens: int = 128, tokenizer_path: str | None = None,
            policy: LoadPolicy = LoadPolicy()) -> dict:
    tok = JsonTokenizer(tokenizer_path) if tokenizer_path else ByteTokenizer()
    template = chat_template_of(os.path.dirname(tokenizer_path)) if tokenizer_path else None
    pairs, summary = read_preferences(path, fmt, policy, template)
    lengths = {"prompt_tokens": [len(tok.encode(p.prompt)) + 1 for p in pairs],
               "chosen_tokens": [len(tok.encode(p.chosen)) + 1 for p in pairs],
               "rejected_tokens": [len(tok.encode(p.rejected)) + 1 for p in pairs]}
    encode_pairs(pairs, tok, max_prompt_len=max_prompt_tokens, max_response_len=max_response_tokens,
                 policy=policy, summary=summary)
    out = summary.as_dict()
    out["chosen_equals_rejected"] = out.pop("skipped_identical")
    out["tokenizer"] = tokenizer_path or "bytes"
    out["limits"] = {"max_prompt_tokens": max_prompt_tokens,
                     "max_response_tokens": max_response_tokens,
                     "over_length": policy.over_length}
    out["lengths"] = {k: _percentiles(v) for k, v in lengths.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m warm_jax.data.inspect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--format", default="auto", choices=FORMATS)
    ap.add_argument("--max_prompt_tokens", type=int, default=256)
    ap.add_argument("--max_response_tokens", type=int, default=128)
    ap.add_argument("--tokenizer", default=None, help="a tokenizer.json (default: bytes)")
    ap.add_argument("--on_identical", default="skip", choices=("skip", "error"))
    ap.add_argument("--on_empty", default="keep", choices=("keep", "skip", "error"))
    ap.add_argument("--on_bad_utf8", default="error", choices=("error", "replace"))
    ap.add_argument("--over_length", "--truncate", default="truncate",
                    choices=("truncate", "skip", "error"))
    a = ap.parse_args(argv)
    try:
        policy = LoadPolicy(on_identical=a.on_identical, on_empty=a.on_empty,
                            on_bad_utf8=a.on_bad_utf8, over_length=a.over_length)
        out = inspect(a.path, a.format, max_prompt_tokens=a.max_prompt_tokens,
                      max_response_tokens=a.max_response_tokens, tokenizer_path=a.tokenizer,
                      policy=policy)
    except (DataError, OSError, ValueError, ImportError) as e:  # no traceback for bad input
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
