"""Generate tests/fixtures/hf/: small random Hugging Face checkpoints of each family warm_jax
imports, with transformers' own outputs on fixed inputs, so CI (which has no torch) checks the
importer against transformers (tests/test_hf.py). Needs torch and transformers:

    python tools/make_hf_fixtures.py            # rewrites tests/fixtures/hf/
    python tools/make_hf_fixtures.py gemma2_rm  # rewrites that one
`make test-parity` compares against live transformers instead of these files."""
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
              max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
GEMMA2 = dict(head_dim=8, query_pre_attn_scalar=12, sliding_window=4, attn_logit_softcapping=2.0,
              final_logit_softcapping=3.0, hidden_activation="gelu_pytorch_tanh",
              tie_word_embeddings=True, rms_norm_eps=1e-6)
MODELS = {   # name: (config class, model class, extra config)
    "llama3_causal": ("LlamaConfig", "LlamaForCausalLM", dict(rope_scaling=LLAMA3,
                                                              rope_theta=500000.0)),
    "llama_rm": ("LlamaConfig", "LlamaForSequenceClassification", dict(num_labels=1)),
    "mistral_causal": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None)),
    "qwen2_rm": ("Qwen2Config", "Qwen2ForSequenceClassification", dict(num_labels=1,
                                                                       tie_word_embeddings=True)),
    "qwen2_causal": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    # small caps and a 4-token window on the even layers, so that each bites on 11 tokens; a
    # query scalar other than head_dim
    "gemma2_causal": ("Gemma2Config", "Gemma2ForCausalLM", GEMMA2),
    "gemma2_rm": ("Gemma2Config", "Gemma2ForSequenceClassification", dict(GEMMA2, num_labels=1)),
}


def inputs():
    """Two rows, the second right-padded with pad_token_id 0 (real tokens are 1..63)."""
    rng = np.random.default_rng(0)
    toks = rng.integers(1, 64, (2, 11))
    mask = np.ones_like(toks)
    toks[1, 7:], mask[1, 7:] = 0, 0
    return toks, mask


def main(names) -> int:
    names = names or list(MODELS)
    toks, mask = inputs()
    for name in names:
        cfg_cls, model_cls, extra = MODELS[name]
        shutil.rmtree(os.path.join(OUT, name), ignore_errors=True)
        torch.manual_seed(0)
        cfg = getattr(transformers, cfg_cls)(**{**COMMON, **extra})
        model = getattr(transformers, model_cls)(cfg).eval()
        with torch.no_grad():   # every tensor random, biases included (their init is zero)
            for p in model.parameters():
                p.normal_(0.0, 0.2)
            out = model(input_ids=torch.tensor(toks), attention_mask=torch.tensor(mask))
        d = os.path.join(OUT, name)
        model.save_pretrained(d, safe_serialization=True)
        key = "scores" if "Sequence" in model_cls else "logits"
        value = out.logits.numpy()[:, 0] if key == "scores" else out.logits.numpy()
        np.savez(os.path.join(d, "io.npz"), tokens=toks, mask=mask, **{key: value})
        with open(os.path.join(d, "generated_by.json"), "w") as f:
            json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                       "script": "tools/make_hf_fixtures.py"}, f)
        print(name, key, value.shape)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
