"""Readers for preference files: Anthropic HH-RLHF, OpenAI summarize-from-feedback, generic JSONL.

Nothing is dropped silently: a malformed line stops loading with `file:line` and the reason (an
unreadable file — missing, a directory, broken gzip — with the file), always as a DataError, and
every policy that changes or drops an example (identical responses, empty texts, invalid UTF-8,
over-length texts) is explicit and counted in the `LoadSummary`.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import os
import re
import zlib
from typing import Iterator

import numpy as np

from warm_jax.data.conversations import Renderer, render_record
from warm_jax.data.pipeline import pad_rows
from warm_jax.data.tokenizer import Tokenizer

FORMATS = ("auto", "hh", "tldr", "jsonl", "trl")   # trl: conversational (warm_jax.data.conversations)
ASSISTANT = "\n\nAssistant:"
# a lone UTF-16 surrogate: what a JSON "\ud800" escape decodes to; not encodable as UTF-8
SURROGATE = re.compile("[\ud800-\udfff]")


class DataError(ValueError):
    """Bad input, with `file:line` in the message."""


@dataclasses.dataclass(frozen=True)
class LoadPolicy:
    """What to do with each kind of doubtful example: 'error' stops loading; the others are counted."""
    on_identical: str = "skip"     # chosen == rejected: 'error' | 'skip'
    on_empty: str = "keep"         # empty response (kept as a lone EOS): 'keep' | 'skip' | 'error'
    on_bad_utf8: str = "error"     # 'error' | 'replace' (U+FFFD)
    over_length: str = "truncate"  # prompts cut from the left, responses from the right | 'skip' | 'error'

    def __post_init__(self):
        allowed = {"on_identical": ("error", "skip"), "on_empty": ("keep", "skip", "error"),
                   "on_bad_utf8": ("error", "replace"), "over_length": ("truncate", "skip", "error")}
        for f, ok in allowed.items():
            if getattr(self, f) not in ok:
                raise ValueError(f"LoadPolicy.{f}={getattr(self, f)!r}: allowed {ok}")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    source: str  # file:line


@dataclasses.dataclass
class LoadSummary:
    path: str
    format: str
    lines: int = 0
    blank_lines: int = 0
    pairs: int = 0
    skipped_identical: int = 0
    empty_responses: int = 0     # kept (policy 'keep') or skipped (policy 'skip')
    replaced_utf8: int = 0
    hh_split_repaired: int = 0   # responses that themselves contain "\n\nAssistant:"
    duplicates: int = 0
    truncated_prompts: int = 0
    truncated_responses: int = 0
    skipped_over_length: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _open_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of a plain or gzipped file. Every I/O and gzip failure becomes a
    DataError naming the file, and the line being read once any was: a traceback from inside gzip
    or zlib says nothing about which file of a run was bad."""
    if not os.path.exists(path):
        raise DataError(f"{path}: preference file does not exist")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a preference file")
    lineno = 0
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                yield lineno, line
    except gzip.BadGzipFile as e:
        if lineno == 0 and str(e).startswith("Not a gzipped file"):
            raise DataError(f"{path}: not gzip data although the name ends in .gz ({e})") from None
        raise DataError(f"{path}:{lineno + 1}: corrupt gzip data ({e})") from None
    except EOFError:
        raise DataError(f"{path}:{lineno + 1}: truncated gzip data (the compressed stream ends "
                        "before its end marker)") from None
    except zlib.error as e:
        raise DataError(f"{path}:{lineno + 1}: corrupt gzip data ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def _kind(v) -> str:
    """A JSON value's type in JSON's words (the file's author wrote JSON, not Python)."""
    if isinstance(v, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _field(obj: dict, key: str, where: str, fmt: str, label: str | None = None):
    if key not in obj:
        raise DataError(f"{where}: missing field {label or key!r} (format {fmt})")
    return obj[key]


def _text(obj: dict, key: str, where: str, fmt: str, label: str | None = None) -> str:
    v = _field(obj, key, where, fmt, label)
    if not isinstance(v, str):
        raise DataError(f"{where}: field {label or key!r} must be a string, got {_kind(v)}")
    return v


def split_hh(chosen: str, rejected: str, where: str) -> tuple[str, str, str, bool]:
    """Split an HH pair into (prompt, chosen, rejected) at the final assistant turn they share.

    The split is at the last "\\n\\nAssistant:" of the two texts' common prefix — which is the last
    one of each text, except when a response itself contains that marker (then a naive split at the
    last marker would cut inside the response). Returns also whether that repair was needed.
    """
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT)
    if cut < 0:
        raise DataError(f"{where}: chosen and rejected share no '\\n\\nAssistant:' turn")
    cut += len(ASSISTANT)
    repaired = cut != chosen.rfind(ASSISTANT) + len(ASSISTANT) or \
        cut != rejected.rfind(ASSISTANT) + len(ASSISTANT)
    return chosen[:cut], chosen[cut:].strip(), rejected[cut:].strip(), repaired


def _optional_text(info: dict, key: str, where: str) -> str | None:
    v = info.get(key)
    if v is not None and not isinstance(v, str):  # str() of an object would go into the prompt
        raise DataError(f"{where}: field 'info.{key}' must be a string or null, got {_kind(v)}")
    return v


def _tldr(obj: dict, where: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) of a summarize-from-feedback comparison, every type checked."""
    info = _field(obj, "info", where, "tldr")
    if not isinstance(info, dict):
        raise DataError(f"{where}: field 'info' must be an object, got {_kind(info)}")
    sums = _field(obj, "summaries", where, "tldr")
    if not isinstance(sums, list) or len(sums) != 2:
        raise DataError(f"{where}: 'summaries' must be a list of 2, got {sums!r:.80}")
    choice = _field(obj, "choice", where, "tldr")
    # a float 1.0 == 1 would pass `in (0, 1)` and then fail as a list index
    if type(choice) not in (int, bool) or choice not in (0, 1):
        raise DataError(f"{where}: 'choice' must be 0, 1 or a boolean, got {choice!r:.80}")
    texts = []
    for i, s in enumerate(sums):
        if not isinstance(s, dict):
            raise DataError(f"{where}: 'summaries[{i}]' must be an object with a string 'text', "
                            f"got {_kind(s)}")
        texts.append(_text(s, "text", where, "tldr", f"summaries[{i}].text").strip())
    post = _optional_text(info, "post", where)
    if post is None:
        post = _optional_text(info, "article", where)
    if post is None:
        raise DataError(f"{where}: missing field 'info.post' (format tldr)")
    sub, title = _optional_text(info, "subreddit", where), _optional_text(info, "title", where)
    prompt = (f"SUBREDDIT: r/{sub}\n" if sub else "") + (f"TITLE: {title}\n" if title else "") + \
        f"POST: {post}\nTL;DR:"
    return prompt, texts[choice], texts[1 - choice]


def _detect(obj: dict, where: str) -> str:
    if "info" in obj and "summaries" in obj:
        return "tldr"
    if isinstance(obj.get("chosen"), list) or isinstance(obj.get("prompt"), list):
        return "trl"
    if {"prompt", "chosen", "rejected"} <= set(obj):
        return "jsonl"
    if {"chosen", "rejected"} <= set(obj):
        return "hh"
    raise DataError(f"{where}: cannot tell the format from keys {sorted(obj)}; pass --format")


def _record(obj: dict, f: str, where: str, renderer: Renderer
            ) -> tuple[tuple[str, str, str], bool]:
    """((prompt, chosen, rejected), whether the HH split was repaired) of one record in format f."""
    if f == "tldr":
        return _tldr(obj, where), False
    if f == "trl":
        try:
            return render_record(obj, renderer, where), False
        except ValueError as e:
            raise DataError(str(e)) from None
    if f == "jsonl":
        return tuple(_text(obj, k, where, f) for k in ("prompt", "chosen", "rejected")), False
    if "prompt" in obj:  # 'hh' splits the prompt off the conversations: this one would be lost
        raise DataError(f"{where}: the record has a 'prompt' key, which format 'hh' would ignore; "
                        "prompt/chosen/rejected records are read by format 'jsonl' (which 'auto' "
                        "picks when the first record has all three keys)")
    prompt, chosen, rejected, repaired = split_hh(_text(obj, "chosen", where, f),
                                                  _text(obj, "rejected", where, f), where)
    return (prompt, chosen, rejected), repaired


def _valid_unicode(texts: tuple[str, ...], where: str, policy: LoadPolicy
                   ) -> tuple[tuple[str, ...], bool]:
    """Lone surrogates (from JSON escapes such as "\\ud800") would fail later, in the tokenizer,
    with no file:line: stop here, or replace them under on_bad_utf8='replace'."""
    out = []
    for name, t in zip(("prompt", "chosen", "rejected"), texts):
        m = SURROGATE.search(t)
        if m and policy.on_bad_utf8 == "error":
            raise DataError(f"{where}: {name} text holds a lone surrogate \\u{ord(m.group()):04x} "
                            "(a bad JSON \\u escape: not valid Unicode)")
        out.append(SURROGATE.sub("\ufffd", t) if m else t)
    return tuple(out), tuple(out) != tuple(texts)


def read_preferences(path: str, fmt: str = "auto", policy: LoadPolicy = LoadPolicy(),
                     chat_template: str | None = None) -> tuple[list[PreferencePair], LoadSummary]:
    """Load a preference file (.jsonl or .jsonl.gz) the way training does; conversational records
    are rendered with `chat_template` where given (`conversations.Renderer`)."""
    renderer = Renderer(chat_template)
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: allowed {FORMATS}")
    summary = LoadSummary(path=path, format=fmt)
    pairs: list[PreferencePair] = []
    seen = collections.Counter()
    for lineno, raw in _open_lines(path):
        where = f"{path}:{lineno}"
        summary.lines += 1
        bad_text = False  # invalid UTF-8 bytes replaced under on_bad_utf8='replace'
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if policy.on_bad_utf8 == "error":
                hint = " (the file looks gzip-compressed: name it .gz)" \
                    if lineno == 1 and raw.startswith(b"\x1f\x8b") else ""
                raise DataError(f"{where}: invalid UTF-8 at byte {e.start}{hint}") from None
            text = raw.decode("utf-8", errors="replace")
            bad_text = True
        if not text.strip():
            summary.blank_lines += 1
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None
        except (ValueError, RecursionError) as e:  # an over-long integer, nesting too deep
            raise DataError(f"{where}: malformed JSON: {e}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {_kind(obj)}")
        if summary.format == "auto":
            summary.format = _detect(obj, where)
        (prompt, chosen, rejected), repaired = _record(obj, summary.format, where, renderer)
        summary.hh_split_repaired += repaired
        (prompt, chosen, rejected), replaced = _valid_unicode((prompt, chosen, rejected), where,
                                                              policy)
        summary.replaced_utf8 += bad_text or replaced
        if not prompt.strip():
            raise DataError(f"{where}: empty prompt")
        if not chosen or not rejected:
            if policy.on_empty == "error":
                empty = [n for n, v in (("chosen", chosen), ("rejected", rejected)) if not v]
                raise DataError(f"{where}: empty {' and '.join(empty)} response "
                                "(policy on_empty='error')")
            summary.empty_responses += 1
            if policy.on_empty == "skip":
                continue
        if chosen == rejected:
            if policy.on_identical == "error":
                raise DataError(f"{where}: chosen == rejected (policy on_identical='error')")
            summary.skipped_identical += 1
            continue
        key = (prompt, chosen, rejected)
        summary.duplicates += seen[key] > 0
        seen[key] += 1
        pairs.append(PreferencePair(prompt, chosen, rejected, where))
    summary.pairs = len(pairs)
    if not pairs:
        raise DataError(f"{path}: no preference pairs loaded ({summary.lines} lines)")
    return pairs, summary


def encode_pairs(pairs: list[PreferencePair], tokenizer: Tokenizer, *, max_prompt_len: int,
                 max_response_len: int, policy: LoadPolicy = LoadPolicy(),
                 summary: LoadSummary | None = None) -> dict[str, np.ndarray]:
    """Token arrays in the task format: prompt (left-padded, BOS first), chosen/rejected
    (right-padded, EOS last) with masks. Over-length texts follow `policy.over_length`."""
    summary = summary or LoadSummary(path="", format="")
    rows = []
    for p in pairs:
        prompt = [tokenizer.bos_id] + tokenizer.encode(p.prompt)
        resp = [tokenizer.encode(r) + [tokenizer.eos_id] for r in (p.chosen, p.rejected)]
        long_prompt = len(prompt) > max_prompt_len
        long_resp = [len(r) > max_response_len for r in resp]
        if long_prompt or any(long_resp):
            if policy.over_length == "error":
                raise DataError(f"{p.source}: prompt {len(prompt)} / responses "
                                f"{[len(r) for r in resp]} tokens exceed max_prompt_len="
                                f"{max_prompt_len} / max_response_len={max_response_len}")
            if policy.over_length == "skip":
                summary.skipped_over_length += 1
                continue
            if long_prompt:  # keep the end of the conversation, where the last turn is
                prompt = [tokenizer.bos_id] + prompt[len(prompt) - max_prompt_len + 1:]
                summary.truncated_prompts += 1
            summary.truncated_responses += sum(long_resp)
            resp = [r[:max_response_len] for r in resp]
        rows.append((prompt, resp[0], resp[1]))
    if not rows:
        raise DataError("every pair was skipped as over-length: raise the length limits")
    out = {}
    out["prompt"], out["prompt_mask"] = pad_rows([r[0] for r in rows], max_prompt_len,
                                                 tokenizer.pad_id, side="left")
    for i, name in ((1, "chosen"), (2, "rejected")):
        out[name], out[name + "_mask"] = pad_rows([r[i] for r in rows], max_response_len,
                                                  tokenizer.pad_id)
    out["flipped"] = np.zeros(len(rows), bool)
    return out
