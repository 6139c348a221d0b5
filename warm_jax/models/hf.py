"""Hugging Face safetensors directories onto warm_jax's decoder: Llama (Llama 3.x's rotary
rescaling included), Mistral, Qwen2 and Gemma 2 (its (1 + w) norms, post-norms, GeGLU, scaled
embeddings, soft-capping and alternating sliding windows), as `*ForCausalLM` (policy) or `*ForSequenceClassification`
(reward model: `score.weight` becomes the reward head, read at the last real token as transformers
reads the last non-pad one).

Mapped exactly or refused: a config field that changes the forward pass in a way the decoder does
not reproduce (another rotary scaling, a sliding window shorter than the positions the model takes,
an activation other than SiLU, biases the decoder has no place for, more than one score) is a
`ValueError` naming the field and its value, before any tensor is read.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from warm_jax.models import safetensors_io
from warm_jax.models.config import ModelConfig

FAMILIES = ("llama", "mistral", "qwen2", "gemma2")
NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
         "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
         "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
         "down": "mlp.down_proj"}
# Gemma 2's four norms per layer: HF's post_attention_layernorm is the attention branch's output
# norm there (in Llama it is the MLP's input norm)
GEMMA2_NORMS = {"attn_norm": "input_layernorm", "attn_post_norm": "post_attention_layernorm",
                "mlp_norm": "pre_feedforward_layernorm",
                "mlp_post_norm": "post_feedforward_layernorm"}


def norm_names(cfg: ModelConfig) -> dict[str, str]:
    """{warm_jax norm: HF norm} of a layer."""
    return GEMMA2_NORMS if cfg.post_norms else {"attn_norm": NAMES["attn_norm"],
                                               "mlp_norm": NAMES["ffn_norm"]}


def map_layer(params: dict, cfg: ModelConfig, i: int, get) -> None:
    """Layer i's tensors (`get(key)`, HF's out x in layout) into `params["body"]["layer_i"]`."""
    D, H, G, K = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
    layer = params["body"][f"layer_{i}"] = {"attn": {}, "mlp": {}}
    for ours, key in (("attn_norm", "attn_norm"), ("mlp_norm", "ffn_norm")):
        layer[ours] = {"scale": get(key)}
    layer["attn"]["wq"] = get("q").T.reshape(D, H, K)
    layer["attn"]["wk"] = get("k").T.reshape(D, G, K)
    layer["attn"]["wv"] = get("v").T.reshape(D, G, K)
    layer["attn"]["wo"] = get("o").T.reshape(H, K, D)
    layer["mlp"]["wg"] = get("gate").T
    layer["mlp"]["wu"] = get("up").T
    layer["mlp"]["wd"] = get("down").T


def _refuse(config: dict, field: str, why: str):
    raise ValueError(f"config.json {field}={config.get(field)!r} ({config.get('model_type')}): "
                     f"{why}")


def kind(config: dict) -> str:
    """"reward_model" for a `*ForSequenceClassification` config, else "causal_lm"."""
    archs = config.get("architectures") or []
    return "reward_model" if any(a.endswith("ForSequenceClassification") for a in archs) \
        else "causal_lm"


def hf_config(config: dict) -> ModelConfig:
    """The `ModelConfig` of an HF config.json, or a one-line refusal naming the field."""
    family = config.get("model_type")
    if family not in FAMILIES + (None,):
        _refuse(config, "model_type", f"allowed {FAMILIES}")
    family = family or "llama"
    gemma = family == "gemma2"
    if gemma:
        act = config.get("hidden_activation") or config.get("hidden_act") or "gelu_pytorch_tanh"
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            _refuse(config, "hidden_activation", "Gemma 2's MLP is GeGLU with the tanh GELU")
    elif config.get("hidden_act", "silu") != "silu":
        _refuse(config, "hidden_act", "the decoder's MLP is SwiGLU (silu)")
    for field in ("attention_bias", "mlp_bias", "use_bidirectional_attention"):
        if config.get(field):
            _refuse(config, field, "the decoder is causal, with no biases there")
    max_pos = int(config.get("max_position_embeddings", 2048))
    window = config.get("sliding_window")
    uses_window = family == "mistral" or (family == "qwen2" and config.get("use_sliding_window"))
    if uses_window and window is not None and int(window) < max_pos:
        _refuse(config, "sliding_window", f"the decoder attends over every position, and this "
                f"model attends over a window shorter than its {max_pos} positions")
    n_layers = config["num_hidden_layers"]
    types = config.get("layer_types") or (   # Gemma 2's default: sliding on even layers
        ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
        if gemma else [])
    if any(t not in ("full_attention", "sliding_attention") for t in types) or \
            (not gemma and "sliding_attention" in types) or (types and len(types) != n_layers):
        _refuse(config, "layer_types", "full attention in every layer, or Gemma 2's "
                "sliding/full layers, one entry per layer")
    windows = None
    if gemma and "sliding_attention" in types:
        if not config.get("sliding_window"):
            _refuse(config, "sliding_window", "sliding_attention layers need a window >= 1")
        windows = tuple(int(config["sliding_window"]) if t == "sliding_attention" else None
                        for t in types)
    # transformers >= 5 writes `rope_parameters` (the type and theta in it); earlier versions
    # `rope_theta` and `rope_scaling`
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    if rope_type not in ("default", "llama3"):
        _refuse(config, "rope_parameters" if "rope_parameters" in config else "rope_scaling",
                "only the default rotary embedding and rope_type 'llama3' are reproduced")
    llama3 = None if rope_type == "default" else (
        float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
        int(rope["original_max_position_embeddings"]))
    if kind(config) == "reward_model" and int(config.get("num_labels", 1)) != 1:
        _refuse(config, "num_labels", "a reward model has one score")
    heads = config["num_attention_heads"]
    gemma_fields = {} if not gemma else dict(
        norm_plus_one=True, post_norms=True, mlp_act="gelu_tanh", embed_scale=True,
        query_scale=float(config.get("query_pre_attn_scalar") or 256),
        attn_softcap=_cap(config.get("attn_logit_softcapping")),
        final_softcap=_cap(config.get("final_logit_softcapping")), layer_windows=windows)
    return ModelConfig(vocab_size=config["vocab_size"], d_model=config["hidden_size"],
                       n_layers=n_layers, n_heads=heads,
                       n_kv_heads=config.get("num_key_value_heads") or heads,
                       head_dim=config.get("head_dim"), d_ff=config["intermediate_size"],
                       max_len=max_pos, rope_theta=theta,
                       norm_eps=float(config.get("rms_norm_eps", 1e-6 if gemma else 1e-5)),
                       tie_embeddings=bool(config.get("tie_word_embeddings", gemma)),
                       qkv_bias=family == "qwen2", rope_llama3=llama3, **gemma_fields)


def _cap(value) -> float | None:
    return None if value is None else float(value)


def shard_files(directory: str, index: str) -> list[str]:
    """The shard files an index's weight_map names, confined to the model directory: the index
    comes with a downloaded model, and must not make the importer read files elsewhere
    (`../x.safetensors`, absolute paths, symlinks out). The one exception is the Hugging Face hub
    cache, whose `snapshots/<revision>/` files are symlinks into the repository's `blobs/`."""
    try:
        with open(index) as f:
            doc = json.load(f)
    except ValueError as e:
        raise ValueError(f"{index}: not valid JSON: {e}") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: 'weight_map' must be an object of tensor name -> file name")
    root = os.path.realpath(directory)
    roots = [root]
    if os.path.basename(os.path.dirname(root)) == "snapshots":
        roots.append(os.path.join(os.path.dirname(os.path.dirname(root)), "blobs"))
    files = set()
    for tensor, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{index}: weight_map[{tensor!r}] = {name!r} is not a file name")
        real = os.path.realpath(os.path.join(root, name))
        if not any(os.path.commonpath([r, real]) == r for r in roots):
            raise ValueError(f"{index}: weight_map[{tensor!r}] = {name!r} resolves to {real}, "
                             f"outside the model directory {root}")
        files.add(real)
    return sorted(files)


def read_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    with open(path) as f:
        return json.load(f)


def load_safetensors(directory: str) -> tuple[dict, ModelConfig]:
    """(params, config) from an HF directory: config.json + model.safetensors, or the sharded
    model.safetensors.index.json. A causal LM gives `LanguageModel`'s tree, a sequence
    classifier `RewardModel`'s (its `score.weight` as the reward head)."""
    config = read_config(directory)
    cfg = hf_config(config)
    index = os.path.join(directory, "model.safetensors.index.json")
    files = shard_files(directory, index) if os.path.exists(index) else \
        [os.path.join(directory, "model.safetensors")]
    raw: dict[str, np.ndarray] = {}
    for f in files:
        raw.update(safetensors_io.read(f))

    def dense(name):
        if name not in raw:
            raise ValueError(f"{directory}: tensor {name!r} missing")
        return np.asarray(raw[name], np.float32)

    params: dict[str, Any] = {"body": {"embedding": dense("model.embed_tokens.weight"),
                                       "final_norm": {"scale": dense("model.norm.weight")}}}
    for i in range(cfg.n_layers):
        hf = {**NAMES, "ffn_norm": norm_names(cfg)["mlp_norm"]}
        map_layer(params, cfg, i, lambda key, i=i: dense(f"model.layers.{i}.{hf[key]}.weight"))
        if cfg.post_norms:
            for ours in ("attn_post_norm", "mlp_post_norm"):
                params["body"][f"layer_{i}"][ours] = {
                    "scale": dense(f"model.layers.{i}.{GEMMA2_NORMS[ours]}.weight")}
        if cfg.qkv_bias:
            attn = params["body"][f"layer_{i}"]["attn"]
            for key, heads in (("q", cfg.n_heads), ("k", cfg.n_kv_heads), ("v", cfg.n_kv_heads)):
                attn[f"b{key}"] = dense(f"model.layers.{i}.{NAMES[key]}.bias").reshape(
                    heads, cfg.resolved_head_dim)
    if kind(config) == "reward_model":
        params["reward_head"] = {"kernel": dense("score.weight").T}
    elif not cfg.tie_embeddings:
        params["lm_head"] = dense("lm_head.weight").T
    return params, cfg


# --- export -----------------------------------------------------------------------------------------
def to_hf_tensors(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The inverse of `load_safetensors`: a `LanguageModel` tree (with `lm_head` unless tied) or a
    `RewardModel` tree (`reward_head`) as HF tensor names and layouts, in the tree's dtypes."""
    D, H, G, K = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
    body = params["body"]
    out = {"model.embed_tokens.weight": body["embedding"],
           "model.norm.weight": body["final_norm"]["scale"]}
    for i in range(cfg.n_layers):
        layer, p = body[f"layer_{i}"], f"model.layers.{i}."
        attn, mlp = layer["attn"], layer["mlp"]
        out.update({p + hf + ".weight": layer[ours]["scale"]
                    for ours, hf in norm_names(cfg).items()})
        out.update({p + NAMES["q"] + ".weight": np.asarray(attn["wq"]).reshape(D, H * K).T,
                    p + NAMES["k"] + ".weight": np.asarray(attn["wk"]).reshape(D, G * K).T,
                    p + NAMES["v"] + ".weight": np.asarray(attn["wv"]).reshape(D, G * K).T,
                    p + NAMES["o"] + ".weight": np.asarray(attn["wo"]).reshape(H * K, D).T,
                    p + NAMES["gate"] + ".weight": np.asarray(mlp["wg"]).T,
                    p + NAMES["up"] + ".weight": np.asarray(mlp["wu"]).T,
                    p + NAMES["down"] + ".weight": np.asarray(mlp["wd"]).T})
        if cfg.qkv_bias:
            for key in ("q", "k", "v"):
                out[p + NAMES[key] + ".bias"] = np.asarray(attn[f"b{key}"]).reshape(-1)
    if "reward_head" in params:
        out["score.weight"] = np.asarray(params["reward_head"]["kernel"]).T
    elif not cfg.tie_embeddings:
        out["lm_head.weight"] = np.asarray(params["lm_head"]).T
    return {k: np.ascontiguousarray(np.asarray(v)) for k, v in out.items()}


def config_of(cfg: ModelConfig, *, reward_model: bool, pad_token_id: int | None = None) -> dict:
    """An HF config.json for `cfg`: Gemma 2 where the decoder has its post-norms, Qwen2 where it
    has q/k/v biases, else Llama."""
    family = "gemma2" if cfg.post_norms else "qwen2" if cfg.qkv_bias else "llama"
    arch = {"llama": "Llama", "qwen2": "Qwen2", "gemma2": "Gemma2"}[family] + (
        "ForSequenceClassification" if reward_model else "ForCausalLM")
    config = {"architectures": [arch], "model_type": family, "vocab_size": cfg.vocab_size,
              "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
              "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
              "num_key_value_heads": cfg.n_kv_heads,
              "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps,
              "rope_theta": cfg.rope_theta, "hidden_act": "silu",
              "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": cfg.param_dtype}
    if cfg.head_dim is not None:
        config["head_dim"] = cfg.head_dim
    if family == "gemma2":
        del config["hidden_act"]
        windows = {w for w in cfg.layer_windows or () if w is not None}
        if len(windows) > 1:
            raise ValueError(f"config_of: layer_windows={cfg.layer_windows!r}: Gemma 2 has one "
                             "sliding_window")
        config.update(hidden_activation="gelu_pytorch_tanh",
                      query_pre_attn_scalar=int(cfg.query_scale) if float(cfg.query_scale)
                      .is_integer() else cfg.query_scale,   # an int in transformers' config
                      attn_logit_softcapping=cfg.attn_softcap,
                      final_logit_softcapping=cfg.final_softcap,
                      sliding_window=windows.pop() if windows else None,
                      layer_types=["full_attention" if cfg.window(i) is None else
                                   "sliding_attention" for i in range(cfg.n_layers)])
    if cfg.rope_llama3 is not None:
        factor, low, high, old = cfg.rope_llama3
        config["rope_scaling"] = {"rope_type": "llama3", "factor": factor,
                                  "low_freq_factor": low, "high_freq_factor": high,
                                  "original_max_position_embeddings": old}
    if reward_model:
        config["num_labels"] = 1
    if pad_token_id is not None:
        config["pad_token_id"] = pad_token_id
    return config


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                   "generation_config.json")


def export(params: dict, cfg: ModelConfig, out_dir: str, *, config: dict | None = None,
           pad_token_id: int | None = None, files_from: str | None = None) -> str:
    """Write `params` as an HF directory loadable by `AutoModelFor…from_pretrained`: config.json
    (`config`, e.g. a member's, else `config_of(cfg)`), model.safetensors, and the tokenizer files
    of `files_from`. `out_dir` must be new or empty."""
    import shutil
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f"export: {out_dir} exists and is not an empty directory")
    reward_model = "reward_head" in params
    tensors = to_hf_tensors(params, cfg)
    config = dict(config) if config is not None else config_of(
        cfg, reward_model=reward_model, pad_token_id=pad_token_id)
    os.makedirs(out_dir, exist_ok=True)
    safetensors_io.write(os.path.join(out_dir, "model.safetensors"), tensors, {"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in TOKENIZER_FILES if files_from else ():
        if os.path.isfile(os.path.join(files_from, name)):
            shutil.copyfile(os.path.join(files_from, name), os.path.join(out_dir, name))
    return out_dir
