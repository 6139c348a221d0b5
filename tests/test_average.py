import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from warm_jax import sharding as shd
from warm_jax.average import analysis as A
from warm_jax.average.rewards import aggregate, make_reward_function, normalised
from warm_jax.average.soup import AverageError, average_checkpoints, stream_average
from warm_jax.checkpoint import Checkpointer, flatten, restore_params
from warm_jax.metrics import read_jsonl
from warm_jax.models import RewardModel, preset, unbox
from warm_jax.rm.diversity import DiversityConfig
from warm_jax.rm.stage import train_reward_models
from warm_jax.average.stage import AverageConfig
from warm_jax.rm.stage import RMConfig


def _tree(seed, shapes=None, dtype=np.float32):
    rng = np.random.default_rng(seed)
    shapes = shapes or {"w": (6, 5), "b": (5,), "deep": {"k": (3, 4, 2)}}
    return jax.tree.map(lambda s: rng.normal(size=s).astype(dtype), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


def _save(path, params, fp="base-1", step=10):
    Checkpointer(str(path), max_to_keep=1).save(step, {"params": params}, {"base_fingerprint": fp})
    return str(path)


def test_streaming_average_equals_numpy_mean_uniform_and_weighted(tmp_path):
    trees = [_tree(i) for i in range(4)]
    dirs = [_save(tmp_path / f"m{i}", t) for i, t in enumerate(trees)]
    avg, meta = stream_average(dirs, chunk_bytes=64)  # tiny chunks: several slices per member
    expect = jax.tree.map(lambda *xs: np.mean(xs, axis=0), *trees)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 avg["params"], expect)
    assert meta["weights"] == [0.25] * 4 and meta["base_fingerprint"] == "base-1"
    w = [0.1, 0.2, 0.3, 0.4]
    out = average_checkpoints(dirs, str(tmp_path / "avg"), w)
    got, meta = restore_params(out)
    expect = jax.tree.map(lambda *xs: sum(wi * x for wi, x in zip(w, xs)), *trees)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, expect)
    assert meta["members"] == [os.path.abspath(d) for d in dirs] and np.allclose(meta["weights"], w)
    # a rerun with the same members skips; a different request refuses to overwrite
    assert average_checkpoints(dirs, out, w) == out
    with pytest.raises(AverageError, match="already holds a different or stale average"):
        average_checkpoints(dirs[:2], out)


def test_averaging_sharded_checkpoints_keeps_shardings(tmp_path, eight_devices):
    mesh = shd.make_mesh(data=2, fsdp=2, model=2, devices=eight_devices)
    specs = {"w": P("fsdp", "model"), "b": P("model"), "deep": {"k": P(None, "fsdp", None)}}
    shapes = {"w": (8, 4), "b": (4,), "deep": {"k": (3, 4, 2)}}
    trees = []
    for i in range(3):
        t = _tree(i, shapes)
        trees.append(jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), t, specs))
    dirs = [_save(tmp_path / f"m{i}", t) for i, t in enumerate(trees)]
    flat_specs = flatten({"params": specs})
    avg, _ = stream_average(dirs, shardings=lambda p: NamedSharding(mesh, flat_specs[p]),
                            chunk_bytes=100)
    for k, x in flatten(avg).items():
        assert x.sharding == NamedSharding(mesh, flat_specs[k]), k
        assert len(x.addressable_shards) == 8
    expect = jax.tree.map(lambda *xs: np.mean([np.asarray(x) for x in xs], 0), *trees)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), avg["params"], expect)


@pytest.mark.parametrize("kind", ["structure", "shape", "dtype", "fingerprint", "missing", "empty"])
def test_mismatches_are_rejected_and_leave_no_output(tmp_path, kind):
    good = _save(tmp_path / "a", _tree(0))
    if kind == "structure":
        bad = _save(tmp_path / "b", {**_tree(1), "extra": np.ones(2, np.float32)})
        msg = "parameter tree differs"
    elif kind == "shape":
        bad = _save(tmp_path / "b", _tree(1, {"w": (6, 4), "b": (5,), "deep": {"k": (3, 4, 2)}}))
        msg = "params/w is (6, 4) float32, but (6, 5) float32"
    elif kind == "dtype":
        bad = _save(tmp_path / "b", _tree(1, dtype=np.float16))
        msg = "params/b is (5,) float16, but (5,) float32"
    elif kind == "fingerprint":
        bad = _save(tmp_path / "b", _tree(1), fp="base-2")
        msg = "descends from base base-2"
    elif kind == "missing":
        bad, msg = str(tmp_path / "nope"), "is missing or unreadable"
    else:
        os.makedirs(tmp_path / "b")
        bad, msg = str(tmp_path / "b"), "no committed checkpoint"
    out = tmp_path / "out"
    with pytest.raises(AverageError) as e:
        average_checkpoints([good, bad], str(out))
    assert msg in str(e.value) and f"member {bad}" in str(e.value), str(e.value)
    assert not out.exists() or not os.listdir(out), "a failed average must leave no output"


def test_fingerprint_override_warns_and_averages(tmp_path, caplog):
    a, b = _save(tmp_path / "a", _tree(0)), _save(tmp_path / "b", _tree(1), fp="other")
    with caplog.at_level("WARNING"):
        avg, _ = stream_average([a, b], allow_base_mismatch=True)
    assert "averaging anyway" in caplog.text
    np.testing.assert_allclose(avg["params"]["b"], (_tree(0)["b"] + _tree(1)["b"]) / 2, atol=1e-6)


def test_ens_wco_uwo_on_hand_computed_values():
    r = jnp.array([[1.0, 0.0, 2.0], [3.0, 0.0, -2.0]])  # M=2 members x B=3
    np.testing.assert_allclose(aggregate(r, "ens"), [2.0, 0.0, 0.0])
    np.testing.assert_allclose(aggregate(r, "wco"), [1.0, 0.0, -2.0])
    # variance across members: [1, 0, 4]
    np.testing.assert_allclose(aggregate(r, "uwo", 0.5), [1.5, 0.0, -2.0])
    with pytest.raises(ValueError, match="allowed"):
        aggregate(r, "median")


def test_reward_functions_on_a_model():
    cfg = preset("tiny")
    rm = RewardModel(cfg)
    toks = jnp.ones((1, 4), jnp.int32)
    ps = [unbox(rm.init(jax.random.PRNGKey(i), toks, toks)["params"]) for i in range(3)]
    prompt = jax.random.randint(jax.random.PRNGKey(9), (5, 6), 4, 64)
    resp = jax.random.randint(jax.random.PRNGKey(8), (5, 4), 4, 64)
    pm, rmask = jnp.ones_like(prompt), jnp.ones_like(resp)
    singles = [make_reward_function(cfg, p)(prompt, pm, resp, rmask) for p in ps]
    ens = make_reward_function(cfg, ps, "ens")(prompt, pm, resp, rmask)
    np.testing.assert_allclose(ens, np.mean(singles, 0), atol=1e-5)
    wco = make_reward_function(cfg, ps, "wco")(prompt, pm, resp, rmask)
    np.testing.assert_allclose(wco, np.min(singles, 0), atol=1e-5)
    norm = normalised(make_reward_function(cfg, ps, "ens"), prompt, pm, resp, rmask)
    z = norm(prompt, pm, resp, rmask)
    np.testing.assert_allclose([np.mean(z), np.std(z)], [0.0, 1.0], atol=1e-4)
    with pytest.raises(ValueError, match="needs a list of >= 2"):
        make_reward_function(cfg, ps[0], "ens")


def test_interpolation_endpoints_are_exact():
    a, b = _tree(0), _tree(1)
    for x, y in zip(jax.tree.leaves(A.mix([a, b], [1.0, 0.0])), jax.tree.leaves(a)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(jax.tree.leaves(A.mix([a, b], [0.0, 1.0])), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_average_stage_writes_warm_soups_and_analyses(toy_init):
    from warm_jax.average.stage import average_reward_models
    wd, task, cfg = toy_init
    div = DiversityConfig(num_members=4, explicit=((3e-3, 0.0, 200), (3e-3, 0.0, 200),
                                                   (1e-3, 0.0, 200), (3e-3, 0.0, 100)))
    train_reward_models(workdir=wd, task=task, model_cfg=cfg,
                        cfg=RMConfig(name="avg", diversity=div, num_steps=40, batch_size=16,
                                     probe_steps=20, ckpt_every=20, population_impl="map"))
    rm_dir = os.path.join(average_reward_models(workdir=wd, task=task, model_cfg=cfg,
                                                cfg=AverageConfig(name="avg", m_values=(2, 4),
                                                                  same_run_step=20)), "seed_0")
    for sub in ("warm_M2", "warm_M4", "greedy"):
        meta = Checkpointer(os.path.join(rm_dir, "averages", sub)).restore_meta()
        assert len(meta["members"]) == len(meta["member_indices"]) and meta["base_fingerprint"]
    m2 = Checkpointer(os.path.join(rm_dir, "averages", "warm_M2")).restore_meta()
    evals = {r["member"]: r["validation"] for r in read_jsonl(os.path.join(rm_dir, "eval.jsonl"))}
    best2 = sorted(evals, key=lambda m: (-evals[m], m))[:2]
    assert m2["member_indices"] == best2, "top-M picks the best members on the ranking split"
    rows = read_jsonl(os.path.join(rm_dir, "analysis.jsonl"))
    kinds = {r["analysis"] for r in rows}
    assert kinds == {"lmc", "lmc_units", "corruption", "units", "corruption_pair", "acc_vs_m",
                     "greedy_soup", "eval_sizes"}
    acc = {(r["model"][:2], r["split"]): r["acc"] for r in rows if r["analysis"] == "corruption"
           and r["model"] in ("wa_M4", "ens_M4")}
    units = {(r["what"], r["split"]): r["values"] for r in rows if r["analysis"] == "units"}
    for (what, split), v in units.items():  # the paired units a claim decides on
        want = {"wa_minus_ens": acc[("wa", split)] - acc[("en", split)],
                "wa_correct": acc[("wa", split)]}.get(what)
        if want is not None:
            assert np.mean(v) == pytest.approx(want, abs=1e-6), (what, split)
    # disagreement of 4 members: n_right * (4 - n_right) of the 6 member pairs differ
    for split in ("validation", "test"):
        d = np.asarray(units[("disagreement", split)])
        assert set(np.round(d * 6, 2)) <= {0, 3, 4} and d.mean() > 0  # values rounded to 1e-4
    diag = [r for r in rows if r["analysis"] == "lmc_units" and r["what"] == "wa_minus_diag"
            and r["pair"] == "baklava" and r["split"] == "test"]
    lmc = [r for r in rows if r["analysis"] == "lmc" and r["pair"] == "baklava"
           and r["split"] == "test" and 0 < r["lambda"] < 1]
    assert np.mean(diag[0]["values"]) == pytest.approx(np.mean([r["wa"] - r["diag"] for r in lmc]),
                                                       abs=1e-3)
    assert {r["pair"] for r in rows if r["analysis"] == "lmc"} == {"data_order", "learning_rate",
                                                                   "baklava", "same_run"}
    ends = [r for r in rows if r["analysis"] == "lmc" and r["lambda"] in (0.0, 1.0)]
    for r in ends:  # at the endpoints, WA, ENS and diag all are the member itself
        assert r["wa"] == pytest.approx(r["diag"]) and r["ens"] == pytest.approx(r["diag"])
    m1 = [r for r in rows if r["analysis"] == "acc_vs_m" and r["m"] == 1]
    assert all(r["wa"] == pytest.approx(r["ens"]) for r in m1), "M = 1: WA and ENS coincide"


def test_disagreement_counts_member_pairs_that_rank_a_pair_differently():
    from warm_jax.average.analysis import disagreement
    correct_3members_x3pairs = [np.array([1, 1, 0]), np.array([1, 0, 0]), np.array([0, 0, 0])]
    np.testing.assert_allclose(disagreement(correct_3members_x3pairs), [2 / 3, 2 / 3, 0])
    np.testing.assert_allclose(disagreement([np.array([1, 0])]), [0, 0])
