"""Reward models over cached trunk states (warm_jax.rm.trunk): the top blocks trained on the
states a frozen trunk computed once are the whole model's, on tokens, to float rounding."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warm_jax.checkpoint import flatten, restore_params
from warm_jax.layout import RunLayout
from warm_jax.models import ModelConfig, RewardModel, unbox

CFG = ModelConfig(vocab_size=260, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=64,
                  max_len=64)
K = 2   # blocks 0-1 are the trunk, block 2 is fine-tuned


def _base_params(cfg: ModelConfig) -> dict:
    rm = RewardModel(cfg)
    p = unbox(rm.init(jax.random.PRNGKey(0), *rm.dummy_inputs())["params"])
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    p = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                  for x, k in zip(leaves, keys)])
    return {"body": jax.device_get(p["body"])}


def _pairs_file(path: str, n: int = 40) -> str:
    rng = np.random.default_rng(0)
    words = ["good", "kind", "fine", "bad", "rude", "mean", "ok", "yes", "no", "maybe"]
    with open(path, "w") as f:
        for i in range(n):
            prompt = " ".join(rng.choice(words, rng.integers(2, 9)))
            good = " ".join(rng.choice(words[:5], rng.integers(1, 5)))
            bad = " ".join(rng.choice(words[2:8], rng.integers(1, 5)))
            f.write(json.dumps({"prompt": f"q{i}: {prompt}", "chosen": good,
                                "rejected": bad}) + "\n")
    return path


def _tasks(wd: str, path: str):
    from warm_jax.data.real import PreferenceFileConfig, PreferenceFileTask
    from warm_jax.rm.trunk import TrunkConfig, TrunkTask
    tokens = PreferenceFileTask(PreferenceFileConfig(path=path, max_prompt_len=24,
                                                     max_response_len=12,
                                                     validation_fraction=0.25,
                                                     test_fraction=0.25))
    return tokens, TrunkTask(TrunkConfig(source=tokens, first_layer=K, batch_size=4,
                                         part_size=8), wd)


@pytest.fixture(scope="module")
def trunk_run(tmp_path_factory):
    """Base → trunk states → 2 top-block members → their average → the held-out report."""
    from warm_jax.average.heldout import HeldoutConfig, heldout_report
    from warm_jax.average.stage import AverageConfig, average_reward_models
    from warm_jax.models.importers import import_checkpoint
    from warm_jax.rm.diversity import DiversityConfig
    from warm_jax.rm.stage import RMConfig, train_reward_models
    from warm_jax.rm.trunk import cache_trunk_states
    root = tmp_path_factory.mktemp("trunk")
    wd, path = str(root / "run"), _pairs_file(str(root / "pairs.jsonl"))
    layout = RunLayout(wd)
    base = _base_params(CFG)
    import_checkpoint(base, CFG, layout.checkpoints(layout.sft), source="test")
    tokens, task = _tasks(wd, path)
    cache_trunk_states(workdir=wd, task=task, model_cfg=CFG)
    train_reward_models(workdir=wd, task=task, model_cfg=CFG, cfg=RMConfig(
        name="clean", num_steps=6, batch_size=8, probe_steps=3, probe_learning_rate=1e-2,
        diversity=DiversityConfig(num_members=2, learning_rates=(1e-2, 3e-2), dropouts=(0.0,)),
        population_impl="map", ckpt_every=3))
    average_reward_models(workdir=wd, task=task, model_cfg=CFG, cfg=AverageConfig(
        m_values=(2,), analyses=False, greedy=False, lmc_pairs={}))
    out = heldout_report(workdir=wd, task=task, token_task=tokens, model_cfg=CFG,
                         cfg=HeldoutConfig(name="clean", method="warm_M2", check_pairs=6))
    with open(out) as f:
        return wd, path, base, tokens, task, json.load(f)


def test_trunk_states_are_the_whole_models_states_entering_the_first_trained_block(trunk_run):
    """States read back equal a forward pass of the unpacked (left-padded prompt + response)
    sequences, row by row, at their real tokens."""
    from warm_jax.models.transformer import Decoder
    _, _, base, tokens, task, _ = trunk_run
    split, states = tokens.preference_split("validation"), task.preference_split("validation")
    seq = np.concatenate([split["prompt"], split["chosen"]], 1)
    mask = np.concatenate([split["prompt_mask"], split["chosen_mask"]], 1)
    ref = np.asarray(Decoder(CFG, stop=K).apply({"params": base["body"]}, jnp.asarray(seq),
                                                jnp.asarray(mask))[0])
    for i in range(len(seq)):
        real = ref[i][mask[i].astype(bool)]
        n = int(states["chosen_mask"][i].sum())
        assert n == len(real)
        np.testing.assert_allclose(states["chosen"][i, :n], real, atol=2e-6, rtol=1e-5)
        assert not states["chosen"][i, n:].any(), "padding holds zeros"


def test_a_top_block_member_on_states_scores_as_the_whole_model_on_tokens(trunk_run):
    from warm_jax.rm.loss import make_pair_scorer
    from warm_jax.rm.trunk import full_params
    wd, _, base, tokens, task, _ = trunk_run
    layout = RunLayout(wd)
    member = restore_params(layout.member("clean/seed_0", 1))[0]
    assert set(member["body"]) == {f"layer_{K}", "final_norm"}, "only the top block is trained"
    probe = restore_params(layout.linear_probe("clean/seed_0"))[0]
    moved = flatten(member)[f"body/layer_{K}/mlp/wd"] - flatten(probe)[f"body/layer_{K}/mlp/wd"]
    assert np.abs(moved).max() > 1e-4, "fine-tuning moved the top block"
    on_states = make_pair_scorer(RewardModel(CFG, input_layer=K))(member,
                                                                   task.preference_split("test"))
    on_tokens = make_pair_scorer(RewardModel(CFG))(
        full_params(base, member),
        {k: v for k, v in tokens.preference_split("test").items() if k != "flipped"})
    for a, b in zip(on_states, on_tokens):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_heldout_report_matches_its_scores_and_the_export_scores_alike(trunk_run):
    from warm_jax.average.evaluate import compare
    from warm_jax.rm.loss import make_pair_scorer
    wd, _, _, _, task, result = trunk_run
    layout = RunLayout(wd)
    split = task.preference_split("test")
    score = make_pair_scorer(RewardModel(CFG, input_layer=K))
    params = [restore_params(d)[0] for d in layout.member_dirs("clean/seed_0")]
    members = [score(p, split) for p in params]
    wa = score(restore_params(layout.average("clean/seed_0", "warm_M2"))[0], split)
    val = [score(p, task.preference_split("validation")) for p in params]
    best = int(np.argmax([np.mean(c > r) for c, r in val]))   # chosen on validation, not test
    again = compare(members, wa, 0.5, best)
    assert result["accuracy"] == again["accuracy"]
    assert result["wa_minus_ens"] == again["wa_minus_ens"]
    assert result["wa_minus_best_member"] == again["wa_minus_best_member"]
    assert result["wa_minus_best_member"]["member"] == f"member_{best}"
    assert result["best_chosen_on"] == "validation"
    assert result["pairs"] == len(split["chosen"]) == 10 and result["input_layer"] == K
    assert result["export"]["pairs_checked"] == 6
    wa_tree = restore_params(layout.average("clean/seed_0", "warm_M2"))[0]
    assert result["trained_parameters"] == sum(x.size for x in jax.tree.leaves(wa_tree))
    assert result["truncation"]["pairs"] == 40 and result["truncation"]["prompts"] > 0
    assert result["export"]["max_abs_diff"] < 1e-5, result["export"]
    export = layout.export("clean/seed_0", "warm_M2")
    with open(os.path.join(export, "config.json")) as f:
        assert json.load(f)["architectures"] == ["LlamaForSequenceClassification"]


def test_a_trunk_stage_killed_mid_way_resumes_to_the_same_states(trunk_run, tmp_path):
    """SIGKILL after the second part file of a fresh trunk stage; the rerun keeps the parts
    written and computes the rest: every state equals the uninterrupted run's, bit for bit."""
    from warm_jax.models.importers import import_checkpoint
    wd0, path, base, _, task0, _ = trunk_run
    wd = str(tmp_path / "run")
    import_checkpoint(base, CFG, RunLayout(wd).checkpoints(RunLayout(wd).sft), source="test")
    script = (f"import sys; sys.path.insert(0, {os.getcwd()!r}); from tests.test_trunk import "
              f"_tasks, CFG; from warm_jax.rm.trunk import cache_trunk_states; "
              f"cache_trunk_states(workdir={wd!r}, task=_tasks({wd!r}, {path!r})[1], "
              f"model_cfg=CFG)")
    env = dict(os.environ, WARM_JAX_KILL_AT="trunk.part#3")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr[-2000:]
    parts = os.listdir(os.path.join(wd, "trunk", f"layer_{K}", "train"))
    assert len([p for p in parts if p.endswith(".npz")]) == 2
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    _, task = _tasks(wd, path)
    for split in task.splits:
        a, b = task.preference_split(split), task0.preference_split(split)
        for k in ("chosen", "chosen_mask", "rejected", "rejected_mask"):
            np.testing.assert_array_equal(a[k], b[k])


def test_heldout_and_rm_refusals_name_the_field_before_any_work(trunk_run):
    from warm_jax.average.heldout import HeldoutConfig, heldout_report
    from warm_jax.checks import ConfigError
    from warm_jax.rm.stage import RMConfig, train_reward_models
    wd, _, _, tokens, task, _ = trunk_run
    before = sorted(os.listdir(os.path.join(wd, "rm")))
    with pytest.raises(ValueError, match="heldout_report.token_task is unset"):
        heldout_report(workdir=wd, task=task, model_cfg=CFG,
                       cfg=HeldoutConfig(name="clean", method="warm_M2"))
    with pytest.raises(ConfigError, match=r"HeldoutConfig.method='warm_M9': an average of .*"
                                          r"\['warm_M2'\]"):
        heldout_report(workdir=wd, task=task, token_task=tokens, model_cfg=CFG,
                       cfg=HeldoutConfig(name="clean", method="warm_M9"))
    with pytest.raises(ConfigError, match="RMConfig.ood_pairs=True: False where the task serves"):
        train_reward_models(workdir=wd, task=task, model_cfg=CFG,
                            cfg=RMConfig(name="other", ood_pairs=True))
    assert sorted(os.listdir(os.path.join(wd, "rm"))) == before
    with pytest.raises(ConfigError, match="HeldoutConfig.split='tset'"):
        HeldoutConfig(split="tset")   # at launch, before the trunk stage's 18 minutes


def test_first_layer_out_of_range_is_refused_in_one_line_before_anything_is_written(tmp_path):
    from warm_jax.checks import ConfigError
    from warm_jax.rm.trunk import TrunkConfig, TrunkTask, cache_trunk_states
    with pytest.raises(ConfigError, match=r"TrunkConfig.first_layer=3: an integer in \[1, 2\]"):
        cache_trunk_states(workdir=str(tmp_path), model_cfg=CFG,
                           task=TrunkTask(TrunkConfig(source=object(), first_layer=3),
                                          str(tmp_path)))
    assert not os.listdir(tmp_path)
