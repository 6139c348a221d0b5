"""A task over a real preference file (HH-RLHF, TL;DR comparisons, generic JSONL): deterministic
train / validation / test split by seed, tokenised, in the same array format as the toy task.
It has no oracle: RM accuracies are measured against the human labels."""
from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

from warm_jax.data.task import SPLITS
from warm_jax.data.conversations import chat_template_of
from warm_jax.data.preferences import (FORMATS, LoadPolicy, LoadSummary, encode_pairs,
                                       read_preferences)
from warm_jax.data.tokenizer import ByteTokenizer, JsonTokenizer
from warm_jax.checks import check_range

HH_ENV = "WARM_HH_PATH"
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HH_DEFAULT = os.path.join(os.path.dirname(_REPO), "shared", "data", "hh-rlhf",
                          "harmless-base-test.jsonl.gz")


def default_hh_path() -> str | None:
    """$WARM_HH_PATH, else ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz beside the checkout."""
    path = os.environ.get(HH_ENV) or HH_DEFAULT
    return path if os.path.exists(path) else None


@dataclasses.dataclass(frozen=True)
class PreferenceFileConfig:
    path: str = ""
    format: str = "auto"
    tokenizer_path: str | None = None   # a tokenizer.json; None: the byte tokenizer
    max_prompt_len: int = 256
    max_response_len: int = 128
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    policy: LoadPolicy = LoadPolicy()

    def __post_init__(self):
        o = "PreferenceFileConfig"
        if self.format not in FORMATS:
            raise ValueError(f"{o}.format={self.format!r}: allowed {FORMATS}")
        check_range(o, "max_prompt_len", self.max_prompt_len, 2)
        check_range(o, "max_response_len", self.max_response_len, 1)
        check_range(o, "validation_fraction", self.validation_fraction, 0.0, 0.5)
        check_range(o, "test_fraction", self.test_fraction, 0.0, 0.5)


def truncation_line(cfg: PreferenceFileConfig, summary: LoadSummary) -> str | None:
    """One line on what the length limits cut (prompts keep their end, where the last turn is;
    responses their start), or None when nothing was cut or dropped."""
    cut, dropped = (summary.truncated_prompts, summary.truncated_responses), \
        summary.skipped_over_length
    if not any(cut) and not dropped:
        return None
    return (f"{cfg.path}: of {summary.pairs} pairs, {cut[0]} prompts cut to their last "
            f"{cfg.max_prompt_len} tokens, {cut[1]} responses to their first "
            f"{cfg.max_response_len}, {dropped} pairs dropped as over-length "
            f"(policy over_length={cfg.policy.over_length!r})")


class PreferenceFileTask:
    name = "preference_file"
    has_oracle = False
    splits = SPLITS
    input_layer = 0

    def __init__(self, cfg: PreferenceFileConfig):
        if not cfg.path:
            raise ValueError(f"PreferenceFileConfig.path is empty (for HH-RLHF set ${HH_ENV})")
        self.cfg = cfg
        self.tokenizer = JsonTokenizer(cfg.tokenizer_path) if cfg.tokenizer_path else ByteTokenizer()
        self.vocab_size = self.tokenizer.vocab_size
        self.pad_id, self.eos_id, self.bos_id = (self.tokenizer.pad_id, self.tokenizer.eos_id,
                                                 self.tokenizer.bos_id)
        self.prompt_len, self.max_response_len = cfg.max_prompt_len, cfg.max_response_len
        template = chat_template_of(os.path.dirname(cfg.tokenizer_path)) \
            if cfg.tokenizer_path else None   # conversational records use the model's template
        pairs, self.summary = read_preferences(cfg.path, cfg.format, cfg.policy, template)
        self._arrays = encode_pairs(pairs, self.tokenizer, max_prompt_len=cfg.max_prompt_len,
                                    max_response_len=cfg.max_response_len, policy=cfg.policy,
                                    summary=self.summary)
        n = len(self._arrays["prompt"])
        self.truncation = truncation_line(cfg, self.summary)
        if self.truncation:   # said at launch, before any stage reads the pairs
            print(self.truncation, file=sys.stderr)
        order = np.random.default_rng(cfg.seed).permutation(n)
        n_val, n_test = int(round(cfg.validation_fraction * n)), int(round(cfg.test_fraction * n))
        self._index = {"validation": order[:n_val], "test": order[n_val:n_val + n_test],
                       "train": order[n_val + n_test:]}

    def for_seed(self, seed: int) -> "PreferenceFileTask":
        """Human labels are drawn once: every chain seed trains on the same labels."""
        return self

    def preference_split(self, split: str) -> dict[str, np.ndarray]:
        if split not in self._index:
            raise ValueError(f"preference split {split!r} unknown: allowed {sorted(self._index)}")
        idx = self._index[split]
        if not len(idx):
            raise ValueError(f"split {split!r} is empty: raise its fraction")
        return {k: v[idx] for k, v in self._arrays.items()}

    def prompts(self, split: str) -> np.ndarray:
        """RL prompts come from the training pairs, evaluation prompts from the test pairs."""
        src = {"rl": "train", "eval": "test"}
        if split not in src:
            raise ValueError(f"prompt split {split!r} unknown: allowed {sorted(src)}")
        return self.preference_split(src[split])["prompt"]

    def _sequences(self, response: str) -> dict[str, np.ndarray]:
        d = self.preference_split("train")
        tokens = np.concatenate([d["prompt"], d[response]], 1)
        mask = np.concatenate([d["prompt_mask"], d[response + "_mask"]], 1)
        return {"tokens": tokens, "mask": mask,
                "loss_mask": np.concatenate([np.zeros_like(d["prompt_mask"]),
                                             d[response + "_mask"]], 1)}

    def pretrain_corpus(self) -> dict[str, np.ndarray]:
        """Without a pretrained model: next-token training on the training split's conversations
        (prompt + either response, all tokens)."""
        a, b = self._sequences("chosen"), self._sequences("rejected")
        out = {k: np.concatenate([a[k], b[k]]) for k in ("tokens", "mask")}
        out["loss_mask"] = out["mask"]
        return out

    def sft_demonstrations(self) -> dict[str, np.ndarray]:
        """SFT on the preferred responses of the training split (loss on the response only)."""
        return self._sequences("chosen")

    def decode(self, tokens, mask=None) -> str:
        toks = np.asarray(tokens)
        if mask is not None:
            toks = toks[np.asarray(mask).astype(bool)]
        return self.tokenizer.decode(toks)

    def load_summary(self) -> LoadSummary:
        return self.summary
