"""The shapes both sides of `make bench-peers` train on; plain Python, imported by both environments.

A 3.03M-parameter Llama reward model: 4 layers, d_model 256, 4 heads / 2 KV heads, d_ff 688,
vocab 512, tied embeddings and a bias-free scalar head (3,033,600 parameters on either side).
32 pairs per step, each sequence (prompt + response) 128 tokens: 8,192 tokens per step.
"""
VOCAB, D_MODEL, N_LAYERS, N_HEADS, N_KV_HEADS, D_FF = 512, 256, 4, 4, 2, 688
ROPE_THETA, NORM_EPS = 10000.0, 1e-5
PAIRS, PROMPT_LEN, RESPONSE_LEN = 32, 64, 64
SEQ_LEN = PROMPT_LEN + RESPONSE_LEN
TOKENS_PER_STEP = 2 * PAIRS * SEQ_LEN
N_PARAMS = 3_033_600
LR, WEIGHT_DECAY, CLIP, B1, B2 = 1e-4, 0.0, 1.0, 0.9, 0.999


def batches(n: int, seed: int = 0):
    """`n` pair batches as numpy int32 arrays (random tokens; every position real)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = rng.integers(4, VOCAB, (PAIRS, PROMPT_LEN), dtype=np.int32)
        chosen = rng.integers(4, VOCAB, (PAIRS, RESPONSE_LEN), dtype=np.int32)
        rejected = rng.integers(4, VOCAB, (PAIRS, RESPONSE_LEN), dtype=np.int32)
        out.append({"prompt": prompt, "prompt_mask": np.ones_like(prompt),
                    "chosen": chosen, "chosen_mask": np.ones_like(chosen),
                    "rejected": rejected, "rejected_mask": np.ones_like(rejected)})
    return out
