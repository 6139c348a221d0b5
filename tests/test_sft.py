"""Pretrain -> SFT on the toy task with the tiny model: loss falls, gold reward rises over the base."""
import os

import numpy as np

from warm_jax import sft
from warm_jax.checkpoint import Checkpointer
from warm_jax.data.toy import ToyTask, ToyTaskConfig
from warm_jax.metrics import read_jsonl
from warm_jax.models import preset
from warm_jax.train import OptimConfig


def test_pretrain_then_sft_lowers_loss_and_raises_gold(tmp_path):
    wd = str(tmp_path)
    task = ToyTask(ToyTaskConfig(n_pretrain=4000, n_sft=1000, n_eval_prompts=512))
    cfg = preset("toy", d_model=32, d_ff=64)
    sft.pretrain(workdir=wd, task=task, model_cfg=cfg, num_steps=300, batch_size=32,
                 optim=OptimConfig(learning_rate=3e-3, warmup_steps=20), ckpt_every=100)
    sft.sft(workdir=wd, task=task, model_cfg=cfg, num_steps=200, batch_size=32,
            trajectory=(100, 150, 200), optim=OptimConfig(learning_rate=3e-3), eval_samples=512)
    pre = read_jsonl(os.path.join(wd, "pretrain", "train.jsonl"))
    assert pre[-1]["loss"] < pre[0]["loss"] - 0.3, (pre[0], pre[-1])
    s = read_jsonl(os.path.join(wd, "sft", "train.jsonl"))
    assert s[-1]["loss"] < s[0]["loss"], (s[0], s[-1])
    ev = read_jsonl(os.path.join(wd, "sft", "eval.jsonl"))
    assert [e["step"] for e in ev] == [0, 100, 150, 200]
    assert ev[0]["kl"] == 0.0 and ev[-1]["kl"] > 0.1
    # the rise is judged against the sampling noise of the two 512-sample means, not a fixed margin
    # (the margin moves with XLA's optimisation level; the noise does not)
    noise = np.hypot(ev[0]["gold_reward_se"], ev[-1]["gold_reward_se"])
    assert ev[-1]["gold_reward"] - ev[0]["gold_reward"] > 3 * noise, ev
    # every SFT checkpoint records the base it descends from
    base = Checkpointer(os.path.join(wd, "pretrain", "checkpoints")).restore_meta()
    assert len(base["base_fingerprint"]) == 20
    ck = Checkpointer(os.path.join(wd, "sft", "checkpoints"))
    assert ck.all_steps() == [100, 150, 200]
    assert all(ck.restore_meta(s)["base_fingerprint"] == base["base_fingerprint"]
               for s in ck.all_steps())
