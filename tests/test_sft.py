"""Pretrain -> SFT on the toy task with the tiny model: loss falls, gold reward rises over the base."""
import os

import numpy as np

from warm_jax import sft
from warm_jax.checkpoint import Checkpointer
from warm_jax.data.toy import ToyTask, ToyTaskConfig
from warm_jax.metrics import read_jsonl
from warm_jax.models import preset
from warm_jax.train import OptimConfig
from warm_jax.sft import PretrainConfig
from warm_jax.sft import SFTConfig


def test_pretrain_then_sft_lowers_loss_and_raises_gold(tmp_path):
    wd = str(tmp_path)
    task = ToyTask(ToyTaskConfig(n_pretrain=4000, n_sft=1000, n_eval_prompts=512))
    cfg = preset("toy", d_model=32, d_ff=64)
    sft.pretrain(workdir=wd, task=task, model_cfg=cfg,
                 cfg=PretrainConfig(num_steps=300, batch_size=32,
                                    optim=OptimConfig(learning_rate=3e-3, warmup_steps=20),
                                    ckpt_every=100))
    sft.sft(workdir=wd, task=task, model_cfg=cfg,
            cfg=SFTConfig(num_steps=200, batch_size=32, trajectory=(100, 150, 200),
                          optim=OptimConfig(learning_rate=3e-3), eval_samples=512))
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


def test_sft_floor_passes_or_stops_with_the_numbers(tmp_path):
    import json

    import pytest
    stage, pre = tmp_path / "sft", tmp_path / "pretrain"
    stage.mkdir()
    pre.mkdir()
    rows = [{"step": 0, "gold_reward": -2.5, "gold_reward_se": 0.1, "kl": 0.0},
            {"step": 600, "gold_reward": -1.08, "gold_reward_se": 0.09, "kl": 2.7},
            {"step": 400, "gold_reward": 0.9, "gold_reward_se": 0.1, "kl": 2.0}]
    (stage / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (pre / "train.jsonl").write_text(json.dumps({"step": 1500, "token_accuracy": 0.113}) + "\n")
    # the last step decides, not the best one
    assert sft.check_sft_floor(str(stage), str(pre), -1.5)["step"] == 600
    with pytest.raises(sft.SFTQualityError) as e:
        sft.check_sft_floor(str(stage), str(pre), 0.0)
    msg = str(e.value)
    for part in ("step 600", "-1.080 ± 0.090", "SFTConfig.min_gold_reward=0.0", "base: -2.500",
                 "token accuracy 0.113", "eval.jsonl are kept"):
        assert part in msg, (part, msg)
    (stage / "eval.jsonl").write_text(json.dumps({"step": 5, "kl": 0.1}) + "\n")
    with pytest.raises(ValueError, match="no oracle"):
        sft.check_sft_floor(str(stage), str(pre), 0.0)


def test_pretraining_loss_on_summaries_only_masks_the_documents():
    import pytest
    all_ = ToyTask(ToyTaskConfig(n_pretrain=8)).pretrain_corpus()
    resp = ToyTask(ToyTaskConfig(n_pretrain=8, pretrain_loss="response")).pretrain_corpus()
    P = ToyTask(ToyTaskConfig()).prompt_len
    np.testing.assert_array_equal(resp["tokens"], all_["tokens"])  # same corpus, other loss
    assert (resp["loss_mask"][:, :P] == 0).all() and (all_["loss_mask"][:, :P] == 1).all()
    np.testing.assert_array_equal(resp["loss_mask"][:, P:], all_["mask"][:, P:])
    with pytest.raises(ValueError, match="pretrain_loss='docs'"):
        ToyTaskConfig(pretrain_loss="docs")
