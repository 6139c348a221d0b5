"""Readers for preference files: Anthropic HH-RLHF, OpenAI summarize-from-feedback, generic JSONL.

Nothing is dropped silently: a malformed line stops loading with `file:line` and the reason, and
every policy that changes or drops an example (identical responses, empty texts, invalid UTF-8,
over-length texts) is explicit and counted in the `LoadSummary`.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import os
from typing import Iterator

import numpy as np

from warm_jax.data.pipeline import pad_rows
from warm_jax.data.tokenizer import Tokenizer

FORMATS = ("auto", "hh", "tldr", "jsonl")
ASSISTANT = "\n\nAssistant:"


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
    if not os.path.exists(path):
        raise FileNotFoundError(f"preference file {path} does not exist")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for i, line in enumerate(f, 1):
            yield i, line


def _field(obj: dict, key: str, where: str, fmt: str):
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r} (format {fmt})")
    return obj[key]


def _text(obj: dict, key: str, where: str, fmt: str) -> str:
    v = _field(obj, key, where, fmt)
    if not isinstance(v, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(v).__name__}")
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


def _tldr_prompt(info: dict, where: str) -> str:
    post = info.get("post") if info.get("post") is not None else info.get("article")
    if post is None:
        raise DataError(f"{where}: missing field 'info.post' (format tldr)")
    sub = f"SUBREDDIT: r/{info['subreddit']}\n" if info.get("subreddit") else ""
    title = f"TITLE: {info['title']}\n" if info.get("title") else ""
    return f"{sub}{title}POST: {post}\nTL;DR:"


def _detect(obj: dict, where: str) -> str:
    if "info" in obj and "summaries" in obj:
        return "tldr"
    if {"prompt", "chosen", "rejected"} <= set(obj):
        return "jsonl"
    if {"chosen", "rejected"} <= set(obj):
        return "hh"
    raise DataError(f"{where}: cannot tell the format from keys {sorted(obj)}; pass --format")


def read_preferences(path: str, fmt: str = "auto", policy: LoadPolicy = LoadPolicy()
                     ) -> tuple[list[PreferencePair], LoadSummary]:
    """Load a preference file (.jsonl or .jsonl.gz) the way training does."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: allowed {FORMATS}")
    summary = LoadSummary(path=path, format=fmt)
    pairs: list[PreferencePair] = []
    seen = collections.Counter()
    for lineno, raw in _open_lines(path):
        where = f"{path}:{lineno}"
        summary.lines += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if policy.on_bad_utf8 == "error":
                raise DataError(f"{where}: invalid UTF-8 at byte {e.start}") from None
            text = raw.decode("utf-8", errors="replace")
            summary.replaced_utf8 += 1
        if not text.strip():
            summary.blank_lines += 1
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if summary.format == "auto":
            summary.format = _detect(obj, where)
        f = summary.format
        if f == "hh":
            prompt, chosen, rejected, repaired = split_hh(_text(obj, "chosen", where, f),
                                                          _text(obj, "rejected", where, f), where)
            summary.hh_split_repaired += repaired
        elif f == "tldr":
            info = _field(obj, "info", where, f)
            sums = _field(obj, "summaries", where, f)
            choice = _field(obj, "choice", where, f)
            if not isinstance(sums, list) or len(sums) != 2:
                raise DataError(f"{where}: 'summaries' must be a list of 2, got {sums!r:.80}")
            if choice not in (0, 1):
                raise DataError(f"{where}: 'choice' must be 0 or 1, got {choice!r}")
            prompt = _tldr_prompt(info, where)
            chosen = _text(sums[choice], "text", where, f).strip()
            rejected = _text(sums[1 - choice], "text", where, f).strip()
        else:
            prompt, chosen, rejected = (_text(obj, k, where, f) for k in ("prompt", "chosen",
                                                                          "rejected"))
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
