"""Byte-level fuzzing of the preference readers: every mutant of a small valid HH, TL;DR or JSONL
file, plain or gzipped, either loads (and encodes) or fails with a DataError naming the file, and the
line for line-level problems. Any other exception is a reader bug: a traceback instead of a reason."""
import gzip
import json
import os
import re

import numpy as np
import pytest

from conftest import REPO
from warm_jax.data.inspect import inspect
from warm_jax.data.preferences import DataError, LoadPolicy

TLDR = os.path.join(REPO, "tests", "fixtures", "tldr_comparisons.jsonl")
HH_RECORDS = [
    {"chosen": "\n\nHuman: What is a pen?\n\nAssistant: A writing tool.",
     "rejected": "\n\nHuman: What is a pen?\n\nAssistant: A fruit."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Café? ☕\n\nAssistant: Sure.",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Café? ☕\n\nAssistant: No \U0001F600"},
    {"chosen": "\n\nHuman: x\n\nAssistant: y\n\nHuman: z\n\nAssistant: w",  # a repaired split
     "rejected": "\n\nHuman: x\n\nAssistant: q"},
]
JSONL_RECORDS = [{"prompt": "Summarise: the cat sat.", "chosen": "Cat sat.", "rejected": "Dog."},
                 {"prompt": "Größe?", "chosen": "groß", "rejected": "klein", "meta": [1, None]},
                 {"prompt": "p", "chosen": "", "rejected": "b"}]


def _lines(records) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=i % 2 == 0).encode() + b"\n"
                    for i, r in enumerate(records))


SOURCES = {"hh": _lines(HH_RECORDS), "tldr": open(TLDR, "rb").read(), "jsonl": _lines(JSONL_RECORDS)}
# bytes that make JSON, UTF-8 and the record formats go wrong in interesting ways
TOKENS = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"\\", b"\n", b"\xff", b"\xed\xa0\x80", b"\xc3",
          b"\\ud800", b"\\u00", b"null", b"0", b"1.0", b"true", b'"prompt": "x", ', b'"info": 1, ',
          b'{"a": 1}', b"\x1f\x8b"]
# values a record-level edit puts in place of a field: each a wrong type for some field somewhere
JSON_VALUES = [None, True, 1, 1.0, 2, "", "x", "\ud800", [], ["a"], {}, {"text": 1}, [{"text": "a"}]]
# problems of a whole file, which have no line to name
WHOLE_FILE = ("no preference pairs loaded", "not gzip data", "preference file does not exist",
              "is a directory", "cannot read")


def _paths(x, path=()):
    yield path
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    for k, v in items:
        yield from _paths(v, path + (k,))


def _mutate_record(line: bytes, rng: np.random.Generator) -> bytes:
    """Valid JSON with one field (or sub-object) replaced by a value of another type, or a stray
    'prompt' key added: random bytes seldom reach the type checks behind the JSON parser."""
    try:
        obj = json.loads(line)
    except ValueError:
        return line
    paths = list(_paths(obj))[1:]
    if not isinstance(obj, dict) or not paths:
        return line
    if rng.random() < 0.15:
        obj["prompt"] = "stray"
    else:
        *parent, key = paths[rng.integers(len(paths))]
        target = obj
        for k in parent:
            target = target[k]
        target[key] = JSON_VALUES[rng.integers(len(JSON_VALUES))]
    # a raw lone surrogate becomes the (invalid) UTF-8 bytes ED A0 80 when not escaped
    return json.dumps(obj, ensure_ascii=bool(rng.random() < 0.5)).encode("utf-8", "surrogatepass")


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random edits: bit flip, token insert, delete, truncate, a line splice, or a
    record-level type change."""
    b = bytearray(data)
    for _ in range(rng.integers(1, 4)):
        op, i = rng.integers(7), int(rng.integers(0, len(b) + 1))
        if op == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << int(rng.integers(8))
        elif op == 1:
            tok = TOKENS[rng.integers(len(TOKENS))] if rng.random() < 0.7 else \
                bytes([int(rng.integers(256))])
            b[i:i] = tok
        elif op == 2:
            del b[i:i + int(rng.integers(1, 5))]
        elif op == 3:
            del b[i:]
        else:
            lines = bytes(b).split(b"\n")
            j, k = (int(x) for x in rng.integers(0, len(lines), 2))
            if op == 6:
                lines[j] = _mutate_record(lines[j], rng)
            elif op == 4:  # half of one line glued to another (an interrupted concatenation)
                lines[j] = lines[j][:len(lines[j]) // 2] + lines[k][len(lines[k]) // 2:]
            elif rng.random() < 0.5:  # a line duplicated elsewhere
                lines.insert(k, lines[j])
            else:  # two lines joined
                lines[j:j + 2] = [b"".join(lines[j:j + 2])]
            b = bytearray(b"\n".join(lines))
    return bytes(b)


def _check(path: str, fmt: str, policy: LoadPolicy, n_lines: int | None) -> tuple[str, str | None]:
    """(outcome, None) if the mutant loads or fails properly, else (outcome, what is wrong)."""
    try:
        inspect(path, fmt, max_prompt_tokens=64, max_response_tokens=32, policy=policy)
        return "loaded", None
    except DataError as e:
        msg = str(e)
        m = re.match(re.escape(path) + r"(?::(\d+))?: (.+)", msg, re.S)
        if m is None:
            return "DataError", f"DataError without the file: {msg}"
        if m.group(1) is None and not m.group(2).startswith(WHOLE_FILE):
            return "DataError", f"line-level DataError without :<line>: {msg}"
        if m.group(1) is not None and n_lines is not None and \
                not 1 <= int(m.group(1)) <= n_lines + 1:
            return "DataError", f"line {m.group(1)} outside the file's {n_lines} lines: {msg}"
        return "DataError", None
    except Exception as e:  # noqa: BLE001 — anything else is the bug this test looks for
        return type(e).__name__, f"{type(e).__name__}: {e}"


@pytest.mark.parametrize("fmt", sorted(SOURCES))
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mutants_load_or_fail_with_file_and_line(tmp_path, fmt, gz):
    rng = np.random.default_rng([sorted(SOURCES).index(fmt), gz])
    src = SOURCES[fmt]
    path = str(tmp_path / (f"{fmt}.jsonl.gz" if gz else f"{fmt}.jsonl"))
    bad, outcomes = [], {"loaded": 0, "DataError": 0}
    for k in range(100):
        if gz and k % 2:  # damage the compressed stream itself: it may inflate to anything
            data, n_lines = _mutate(gzip.compress(src, mtime=0), rng), None
        else:  # damage the text, then compress it intact
            text = _mutate(src, rng)
            data = gzip.compress(text, mtime=0) if gz else text
            n_lines = text.count(b"\n") + 1
        with open(path, "wb") as f:
            f.write(data)
        policy = LoadPolicy(on_bad_utf8="replace") if k % 3 == 0 else LoadPolicy()
        for read_fmt in ("auto", fmt):
            outcome, problem = _check(path, read_fmt, policy, n_lines)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if problem:
                bad.append(f"mutant {k} (format {read_fmt}): {problem}")
    assert not bad, "\n".join(bad[:10])
    # the mutations reach both outcomes, so both the error paths and the loading are exercised
    assert outcomes["loaded"] > 5 and outcomes["DataError"] > 20, outcomes
