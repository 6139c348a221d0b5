"""The sampled OOD split (warm_jax.ood): pairs from the pretrained and SFT policies, labelled by the
oracle; its ceiling; the task wrapper the reward-model stages read it through."""
import os
import shutil

import numpy as np
import pytest

from warm_jax.guards import StageConfigError
from warm_jax.layout import RunLayout
from warm_jax.metrics import read_jsonl
from warm_jax.ood import WithOOD, ood_pairs, oracle_accuracy, splits_of, with_ood
from warm_jax.data.task import SPLITS
from warm_jax.ood import OODConfig


def test_oracle_accuracy_counts_ties_as_half():
    assert oracle_accuracy(np.array([1.0, -1.0, 0.0, 2.0])) == pytest.approx(2.5 / 4)


@pytest.fixture
def ood_workdir(toy_init, tmp_path):
    """A copy of the shared pretrain + SFT run (the stage writes next to them)."""
    src, task, cfg = toy_init
    wd = str(tmp_path / "run")
    for d in ("pretrain", "sft"):
        shutil.copytree(os.path.join(src, d), os.path.join(wd, d))
    return wd, task, cfg


def test_stage_labels_sampled_pairs_by_the_oracle_and_states_the_ceiling(ood_workdir):
    wd, task, cfg = ood_workdir
    path = ood_pairs(workdir=wd, task=task, model_cfg=cfg,
                     cfg=OODConfig(seed=0))
    with np.load(path) as z:
        pairs = {k: z[k] for k in z.files}
    n = task.cfg.n_rm_test
    assert np.array_equal(pairs["prompt"], task.prompts("ood"))
    assert pairs["source"].tolist() == [i % 3 for i in range(n)]
    assert not pairs["flipped"].any()
    gold = lambda r: task.gold_reward(pairs["prompt"], pairs[r], pairs[r + "_mask"])  # noqa: E731
    np.testing.assert_allclose(pairs["gold_margin"], gold("chosen") - gold("rejected"), atol=1e-5)
    # the prompts are new: none is a prompt of the offline test split
    test_prompts = {p.tobytes() for p in task.preference_split("test")["prompt"]}
    assert not any(p.tobytes() in test_prompts for p in pairs["prompt"])
    rows = read_jsonl(RunLayout(wd).ood_summary)
    whole = {r["split"]: r for r in rows if "source" not in r}
    assert set(whole) == {"validation", "test", "ood"}
    assert whole["ood"]["oracle_accuracy"] == pytest.approx(oracle_accuracy(pairs["gold_margin"]))
    assert whole["validation"]["oracle_accuracy"] == pytest.approx(
        oracle_accuracy(task.preference_split("validation")["gold_margin"]))
    per_source = [r for r in rows if "source" in r]
    assert [r["source"] for r in per_source] == ["pretrain T=1", "sft T=1.5", "sft T=1"]
    assert sum(r["pairs"] for r in per_source) == n
    # the pretrained base writes worse summaries than the SFT policy at the same temperature
    g = (gold("chosen") + gold("rejected")) / 2
    assert g[pairs["source"] == 0].mean() < g[pairs["source"] == 2].mean()

    before = os.path.getmtime(path)
    assert ood_pairs(workdir=wd, task=task, model_cfg=cfg,
                     cfg=OODConfig(seed=0)) == path
    assert os.path.getmtime(path) == before, "a finished stage was redone"
    with pytest.raises(StageConfigError, match="seed: 0 -> 1"):
        ood_pairs(workdir=wd, task=task, model_cfg=cfg,
                  cfg=OODConfig(seed=1))


def test_bad_sources_and_tasks_without_an_oracle_are_refused(ood_workdir):
    wd, task, cfg = ood_workdir
    with pytest.raises(ValueError, match=r"OODConfig.sources=.*policy in \('pretrain', 'sft'\)"):
        OODConfig(sources=(("rl", 1.0),))

    class NoOracle:
        name, has_oracle = "hh", False
    with pytest.raises(ValueError, match="task 'hh' has no oracle labeller"):
        ood_pairs(workdir=wd, task=NoOracle(), model_cfg=cfg,
                  cfg=OODConfig())
    assert not os.path.exists(RunLayout(wd).ood)


def test_with_ood_adds_the_split_for_every_chain_seed(toy_init, tmp_path):
    _, task, _ = toy_init
    with pytest.raises(FileNotFoundError, match="run the ood_pairs stage"):
        with_ood(task, str(tmp_path / "missing.npz"))
    fake = {"prompt": np.ones((3, 4), np.int32), "gold_margin": np.array([1.0, 0.0, -2.0])}
    path = str(tmp_path / "pairs.npz")
    np.savez(path, **fake)
    t = with_ood(task, path)
    assert splits_of(task) == SPLITS and splits_of(t) == SPLITS + ("ood",)
    assert isinstance(t, WithOOD) and t.cfg == task.cfg and t.vocab_size == task.vocab_size
    np.testing.assert_array_equal(t.preference_split("ood")["gold_margin"], fake["gold_margin"])
    t1 = t.for_seed(1)
    np.testing.assert_array_equal(t1.preference_split("ood")["prompt"], fake["prompt"])
    # the chain seed's own training labels, the shared evaluation splits
    assert t1.cfg.label_seed == 1
    for split in ("train", "validation"):
        np.testing.assert_array_equal(t1.preference_split(split)["chosen"],
                                      task.for_seed(1).preference_split(split)["chosen"])
