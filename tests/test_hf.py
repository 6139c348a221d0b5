"""Hugging Face checkpoints of each family against transformers' own outputs: the fixtures in
tests/fixtures/hf/ are small random models and transformers' logits / scores on fixed inputs
(tools/make_hf_fixtures.py, with torch; CI has none), and every config the importer cannot
reproduce exactly is refused with one line naming the field."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("safetensors", reason="the `import` extra (safetensors) is not installed")

from warm_jax.guards import canonical  # noqa: E402
from warm_jax.models import LanguageModel, ModelConfig, RewardModel  # noqa: E402
from warm_jax.models.hf import hf_config, load_safetensors  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
NAMES = sorted(os.listdir(FIXTURES)) if os.path.isdir(FIXTURES) else []


def test_every_family_is_in_the_fixtures():
    assert {"llama3_causal", "llama_rm", "mistral_causal", "qwen2_rm", "qwen2_causal",
            "gemma2_causal", "gemma2_rm"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_transformers(name):
    d = os.path.join(FIXTURES, name)
    io = np.load(os.path.join(d, "io.npz"))
    params, cfg = load_safetensors(d)
    params = jax.tree.map(jnp.asarray, params)
    toks, mask = jnp.asarray(io["tokens"]), jnp.asarray(io["mask"])
    if "scores" in io:   # the score at the last real token: row 1 is right-padded
        ours = np.asarray(RewardModel(cfg).apply({"params": params}, toks, mask))
        ref = io["scores"]
    else:
        real = io["mask"].astype(bool)
        ours = np.asarray(LanguageModel(cfg).apply({"params": params}, toks, mask))[real]
        ref = io["logits"][real]
    err = float(np.abs(ours - ref).max())
    assert err < 1e-4, (name, err)
    assert cfg.qkv_bias == name.startswith("qwen2")
    assert (cfg.rope_llama3 is not None) == name.startswith("llama3")
    assert cfg.post_norms == (cfg.layer_windows == (4, None)) == name.startswith("gemma2")


def _config(name, **change):
    config = json.load(open(os.path.join(FIXTURES, name, "config.json")))
    for k, v in change.items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v
    return config


@pytest.mark.parametrize("name, change, field", [
    ("llama_rm", {"model_type": "gemma3"}, "model_type"),
    ("gemma2_rm", {"hidden_activation": "gelu"}, "hidden_activation"),
    ("gemma2_causal", {"layer_types": ["sliding_attention"]}, "layer_types"),
    ("gemma2_rm", {"sliding_window": None}, "sliding_window"),
    ("gemma2_rm", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ("llama3_causal", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_parameters"),
    ("llama3_causal", {"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 2.0}},
     "rope_scaling"),
    ("llama_rm", {"hidden_act": "gelu"}, "hidden_act"),
    ("llama_rm", {"attention_bias": True}, "attention_bias"),
    ("mistral_causal", {"sliding_window": 16}, "sliding_window"),
    ("qwen2_rm", {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
    ("llama_rm", {"num_labels": 2, "id2label": {"0": "a", "1": "b"}}, "num_labels"),
])
def test_what_cannot_be_reproduced_is_refused_naming_the_field(name, change, field):
    with pytest.raises(ValueError) as e:
        hf_config(_config(name, **change))
    msg = str(e.value)
    assert msg.startswith(f"config.json {field}=") and "\n" not in msg, msg


def test_older_transformers_configs_and_a_window_the_model_never_needs(tmp_path):
    # transformers 4.x: rope_theta and rope_scaling at the top level
    old = _config("llama3_causal", rope_parameters=None, rope_theta=500000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    assert hf_config(old) == hf_config(_config("llama3_causal"))
    assert hf_config(old).rope_llama3 == (8.0, 1.0, 4.0, 16) and hf_config(old).rope_theta == 5e5
    # a window as long as the positions changes nothing: imported
    assert hf_config(_config("mistral_causal", sliding_window=64)).max_len == 64
    # a directory whose config is refused reads no tensor
    d = tmp_path / "m"
    shutil.copytree(os.path.join(FIXTURES, "mistral_causal"), d)
    json.dump(_config("mistral_causal", sliding_window=8), open(d / "config.json", "w"))
    os.remove(d / "model.safetensors")
    with pytest.raises(ValueError, match="sliding_window=8"):
        load_safetensors(str(d))


def test_new_model_fields_enter_recorded_configs_only_when_set():
    base = canonical(ModelConfig())
    assert "qkv_bias" not in base and "rope_llama3" not in base   # earlier records still match
    assert canonical(ModelConfig(qkv_bias=True))["qkv_bias"] is True
    assert canonical(ModelConfig(rope_llama3=(8.0, 1.0, 4.0, 16)))["rope_llama3"] == [8.0, 1.0,
                                                                                      4.0, 16]
    with pytest.raises(ValueError, match="rope_llama3"):
        ModelConfig(rope_llama3=(8.0, 4.0, 1.0, 16))


@pytest.mark.parametrize("name", NAMES)
def test_import_export_import_is_bitwise(name, tmp_path):
    from warm_jax.models.hf import export
    params, cfg = load_safetensors(os.path.join(FIXTURES, name))
    out = export(params, cfg, str(tmp_path / "out"), pad_token_id=0,
                 files_from=os.path.join(FIXTURES, name))
    again, cfg2 = load_safetensors(out)
    assert cfg2 == cfg
    assert jax.tree.structure(again) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    with pytest.raises(FileExistsError, match="not an empty directory"):
        export(params, cfg, out)


def _members(tmp_path, n=3, scale=0.02, family="qwen2_rm"):
    """n fine-tunings of a reward-model fixture (its weights plus small noise) and one unrelated
    model of the same shapes."""
    from warm_jax.models import safetensors_io
    src = os.path.join(FIXTURES, family)
    base = safetensors_io.read(os.path.join(src, "model.safetensors"))
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(n + 1):
        d = tmp_path / (f"m{i}" if i < n else "other")
        shutil.copytree(src, d)
        if i < n:
            t = {k: (v + scale * rng.standard_normal(v.shape)).astype(v.dtype)
                 for k, v in base.items()}
        else:
            t = {k: (rng.standard_normal(v.shape) * v.std()).astype(v.dtype)
                 for k, v in base.items()}
        safetensors_io.write(str(d / "model.safetensors"), t, {"format": "pt"})
        dirs.append(str(d))
    return src, dirs[:n], dirs[n]


def _cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "warm_jax.average", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("family", ["qwen2_rm", "gemma2_rm"])
def test_hugging_face_reward_models_are_averaged_checked_and_exported(tmp_path, family):
    from warm_jax.models import safetensors_io
    base, members, other = _members(tmp_path, family=family)
    out = str(tmp_path / "avg")
    r = _cli(out, *members, "--weights", "1", "1", "2", "--base", base)
    assert r.returncode == 0, r.stderr
    got = safetensors_io.read(os.path.join(out, "model.safetensors"))
    ms = [safetensors_io.read(os.path.join(m, "model.safetensors")) for m in members]
    for k in got:   # the float32 weighted sum, in the members' order
        expect = (np.float32(0.25) * ms[0][k] + np.float32(0.25) * ms[1][k]
                  + np.float32(0.5) * ms[2][k])
        np.testing.assert_array_equal(got[k], expect.astype(ms[0][k].dtype))
    params, cfg = load_safetensors(out)   # a Hugging Face RM again, with the members' config
    assert "reward_head" in params and cfg == load_safetensors(members[0])[1]
    record = json.load(open(os.path.join(out, "warm_average.json")))
    assert all(d < 0.5 for d in record["relative_distance_to_base"])
    # the project's checkpoint instead
    r = _cli(str(tmp_path / "wj"), *members, "--weights", "1", "1", "2", "--format", "warm_jax")
    assert r.returncode == 0, r.stderr
    from warm_jax.checkpoint import restore_params
    wj, meta = restore_params(str(tmp_path / "wj"))   # the same average as the HF output's
    flat = lambda t: {jax.tree_util.keystr(k): np.asarray(v)  # noqa: E731
                      for k, v in jax.tree_util.tree_flatten_with_path(t)[0]}
    assert flat(wj).keys() == flat(params).keys()
    for k, v in flat(params).items():
        np.testing.assert_array_equal(flat(wj)[k], v, err_msg=k)
    assert "base_fingerprint" in meta


@pytest.mark.parametrize("case", ["twice", "unrelated", "config", "out_is_file", "mixed"])
def test_hugging_face_averaging_refuses_in_one_line_and_writes_nothing(tmp_path, case):
    base, members, other = _members(tmp_path)
    out = tmp_path / "avg"
    if case == "twice":
        args, want = [members[0], members[1], members[0] + "/"], "member given more than once"
    elif case == "unrelated":
        args, want = [*members, other, "--base", base], "not fine-tunings of --base"
    elif case == "config":
        c = json.load(open(os.path.join(members[1], "config.json")))
        c["rms_norm_eps"] = 1e-6
        json.dump(c, open(os.path.join(members[1], "config.json"), "w"))
        args, want = members, "config.json differs from"
    elif case == "out_is_file":
        out.write_text("x")
        args, want = members, "exists and is not a directory"
    else:
        args, want = [members[0], str(tmp_path / "m_native")], "mix Hugging Face directories"
        (tmp_path / "m_native").mkdir()
    r = _cli(str(out), *args)
    assert r.returncode == 2 and want in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (out.is_file() and out.read_text() == "x") if case == "out_is_file" else \
        not out.exists()
    assert not os.path.exists(str(out) + ".partial")


def _char_tokenizer(path):
    """A 64-token character tokenizer (the fixtures' vocabulary size) as a tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    chars = list("abcdefghijklmnopqrstuvwxyz .,?!")
    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<s>", "<unk>"] + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.save(str(path))


def _pairs(path, n=80, seed=0):
    rng = np.random.default_rng(seed)
    words = lambda k: " ".join("".join(rng.choice(list("abcdefgh"), 4)) for _ in range(k))  # noqa
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": words(3), "chosen": words(2), "rejected": words(2)})
                    + "\n")
    return str(path)


@pytest.mark.parametrize("family", ["qwen2_rm", "gemma2_rm"])
def test_evaluate_scores_members_wa_and_ens_on_the_users_pairs(tmp_path, family):
    from warm_jax.average.evaluate import evaluate, interval
    _, members, _ = _members(tmp_path, n=3, scale=0.05, family=family)
    _char_tokenizer(tmp_path / "tokenizer.json")
    pairs = _pairs(tmp_path / "pairs.jsonl")
    out = evaluate(pairs, members, tokenizer=str(tmp_path / "tokenizer.json"),
                   max_prompt_len=8, max_response_len=12)
    acc = out["accuracy"]
    assert out["pairs"] == 80 and out["truncated_prompts"] == 80   # 15 characters + BOS > 8
    assert set(acc) == {"member_0", "member_1", "member_2", "WA", "ENS", "WCO", "UWO"}
    assert out["wa_minus_ens"]["mean"] == pytest.approx(acc["WA"] - acc["ENS"])
    best = out["wa_minus_best_member"]["member"]
    assert acc[best] == max(acc[f"member_{i}"] for i in range(3))
    lo, hi = out["wa_minus_ens"]["ci"]
    assert lo <= out["wa_minus_ens"]["mean"] <= hi
    # three copies of one member: WA, ENS and the member are the same reward model
    same = []
    for i in range(3):
        shutil.copytree(members[0], tmp_path / f"copy{i}")
        same.append(str(tmp_path / f"copy{i}"))
    out = evaluate(pairs, same, tokenizer=str(tmp_path / "tokenizer.json"), max_prompt_len=20,
                   max_response_len=12)
    assert out["truncated_prompts"] == 0
    assert out["accuracy"]["WA"] == out["accuracy"]["ENS"] == out["accuracy"]["member_0"]
    assert out["wa_minus_ens"]["ci"] == [0.0, 0.0]
    # alike on every pair: a rate of differing pairs p leaves all 80 alike with chance
    # (1 - p)^80, which is 2.5% at the bound; deciding a difference that large takes ~6 / p pairs
    b = out["wa_minus_ens"]
    assert b["differing"] == 0 and (1 - b["bound"]) ** 80 == pytest.approx(0.025)
    assert 6 / b["bound"] <= b["pairs_needed_at_bound"] < 6 / b["bound"] + 1
    assert out["wa_ens_margin_correlation"] == pytest.approx(1.0)
    # the pairs a 95% interval would need at the measured effect: (1.96 sd / mean)^2
    d = np.array([1.0] * 6 + [-1.0] * 4 + [0.0] * 90)
    r = interval(d)
    assert r["ci"][0] < 0 < r["ci"][1]
    assert r["pairs_needed"] == int(np.ceil((1.959963984540054 * d.std(ddof=1) / 0.02) ** 2))


def test_evaluate_refuses_a_causal_lm_and_one_member_in_one_line(tmp_path):
    import subprocess
    import sys
    _, members, _ = _members(tmp_path, n=2)
    pairs = _pairs(tmp_path / "pairs.jsonl", n=4)
    for args, want in (([members[0], os.path.join(FIXTURES, "qwen2_causal")], "is a causal LM"),
                       ([members[0]], "at least two members")):
        r = subprocess.run([sys.executable, "-m", "warm_jax.average.evaluate", pairs, *args],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and want in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
