"""The export's live check against transformers (`make test-parity`), in two processes because
warm_jax and torch live in different environments:

    .venv/bin/python tools/check_hf_export.py write DIR         # import each fixture, export it
    .venv-peers/bin/python tools/check_hf_export.py load DIR    # load with transformers, compare

`load` fails on any missing or unexpected weight, or on a score or logit more than 1e-4 from
warm_jax's."""
import os
import shutil
import sys

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")


def write(root: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import jax
    import jax.numpy as jnp

    from warm_jax.models import LanguageModel, RewardModel
    from warm_jax.models.hf import export, load_safetensors
    shutil.rmtree(root, ignore_errors=True)
    for name in sorted(os.listdir(FIXTURES)):
        src = os.path.join(FIXTURES, name)
        params, cfg = load_safetensors(src)
        io = np.load(os.path.join(src, "io.npz"))
        model = RewardModel(cfg) if "reward_head" in params else LanguageModel(cfg)
        ours = model.apply({"params": jax.tree.map(jnp.asarray, params)},
                           jnp.asarray(io["tokens"]), jnp.asarray(io["mask"]))
        out = export(params, cfg, os.path.join(root, name), pad_token_id=0, files_from=src)
        np.save(os.path.join(out, "warm_jax_out.npy"), np.asarray(ours))


def load(root: str) -> int:
    import torch
    import transformers
    bad = 0
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        io = np.load(os.path.join(FIXTURES, name, "io.npz"))
        auto = (transformers.AutoModelForSequenceClassification if "scores" in io
                else transformers.AutoModelForCausalLM)
        model, info = auto.from_pretrained(d, output_loading_info=True)
        with torch.no_grad():
            got = model.eval()(input_ids=torch.tensor(io["tokens"]),
                               attention_mask=torch.tensor(io["mask"])).logits.numpy()
        ours = np.load(os.path.join(d, "warm_jax_out.npy"))
        real = io["mask"].astype(bool)
        err = float(np.abs(got[:, 0] - ours).max() if "scores" in io else
                    np.abs(got[real] - ours[real]).max())
        issues = {k: v for k, v in info.items() if v}
        ok = err < 1e-4 and not issues
        bad += not ok
        print(f"{name}: max difference {err:.1e}, loading issues {issues or 'none'}: "
              f"{'ok' if ok else 'FAILED'}")
    return 1 if bad else 0


if __name__ == "__main__":
    mode, root = sys.argv[1], sys.argv[2]
    sys.exit(write(root) if mode == "write" else load(root))
