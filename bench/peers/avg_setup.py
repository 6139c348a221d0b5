"""Write the M = 6 members that `make bench-peers` averages, once in each tool's format.

`python -m bench.peers.avg_setup ROOT` (project venv) writes, from the same float32 weights of a
127.0M-parameter Llama (vocab 32000, d_model 768, 12 layers, 12 heads / 4 KV heads, d_ff 3020, tied
embeddings): ROOT/wj/m<i> as warm_jax member checkpoints (`Checkpointer.save` of {"params"}, as
`rm.stage.export_member` writes them) and ROOT/hf/m<i> as Hugging Face Llama directories
(config.json + model.safetensors) for mergekit. Prints a JSON line with the parameter count.
"""
import json
import os
import sys

import numpy as np

M = 6
CFG = dict(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=3020,
           max_len=2048)


def member_params(cfg, seed: int) -> dict:
    """warm_jax LanguageModel parameters (the tree `LanguageModel.init` builds), random normal."""
    import jax
    import jax.numpy as jnp

    from warm_jax.models import LanguageModel, unbox
    shapes = jax.eval_shape(lambda: unbox(LanguageModel(cfg).init(
        jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"]))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape, dtype=np.float32)), shapes)


def main(root: str) -> None:
    import jax
    from safetensors.numpy import save_file

    from warm_jax.checkpoint import Checkpointer
    from warm_jax.models.config import ModelConfig
    from warm_jax.models.hf import config_of, to_hf_tensors
    cfg = ModelConfig(**CFG)
    n = None
    for i in range(M):
        params = member_params(cfg, seed=i)
        n = sum(int(x.size) for x in jax.tree.leaves(params))
        Checkpointer(os.path.join(root, "wj", f"m{i}"), max_to_keep=1).save(
            1, {"params": params}, {"base_fingerprint": "bench-peers"})
        hf_dir = os.path.join(root, "hf", f"m{i}")
        os.makedirs(hf_dir, exist_ok=True)
        save_file(to_hf_tensors(params, cfg), os.path.join(hf_dir, "model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(hf_dir, "config.json"), "w") as f:
            json.dump(config_of(cfg, reward_model=False), f, indent=1)
        del params
    print("RESULT " + json.dumps({"n_params": n, "members": M}))


if __name__ == "__main__":
    main(sys.argv[1])
