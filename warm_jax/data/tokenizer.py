"""Tokenisers for real text: a zero-download byte-level default, or a `tokenizers` JSON file."""
from __future__ import annotations

import os
from typing import Protocol, Sequence


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes shifted past four specials (pad 0, eos 1, bos 2, sep 3): vocabulary 260."""
    pad_id, eos_id, bos_id, sep_id = 0, 1, 2, 3
    offset = 4
    vocab_size = 256 + offset

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
        return data.decode("utf-8", errors="replace")


class JsonTokenizer:
    """A Hugging Face `tokenizer.json` read with the `tokenizers` package (an optional extra)."""

    def __init__(self, path: str, *, eos_token: str | None = None, bos_token: str | None = None,
                 pad_token: str | None = None):
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError as e:
            raise ImportError("loading a tokenizer.json needs the `tokenizers` package: "
                              "pip install 'warm_jax[import]'") from e
        if not os.path.exists(path):
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        self._tok = HFTokenizer.from_file(path)
        self.vocab_size = self._tok.get_vocab_size()
        vocab = self._tok.get_vocab()

        def special(name, candidates):
            for c in ([name] if name else []) + candidates:
                if c in vocab:
                    return vocab[c]
            return None
        self.eos_id = special(eos_token, ["<|endoftext|>", "</s>", "<|im_end|>", "<eos>"])
        self.bos_id = special(bos_token, ["<|im_start|>", "<s>", "<bos>"])
        self.pad_id = special(pad_token, ["<pad>", "<|padding|>"])
        if self.eos_id is None:
            raise ValueError(f"{path}: no EOS token found; pass eos_token=")
        if self.bos_id is None:
            self.bos_id = self.eos_id
        if self.pad_id is None:
            self.pad_id = self.eos_id  # masks, not ids, mark padding everywhere in warm_jax

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])
