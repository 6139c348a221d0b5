"""WARP's checkpoints (`warm_jax.rl.warp_io`): per-run export of a stacked RL state, and merges read
a slice of leaves at a time that equal the in-memory `warp.merge_policies` and LITI."""
import os

import jax
import numpy as np
import pytest

from warm_jax.checkpoint import Checkpointer, restore_params
from warm_jax.rl import warp
from warm_jax.rl.warp_io import MergeError, export_policies, merge_checkpoints


def _policy(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {"body": {"w": (scale * rng.normal(size=(6, 5))).astype(np.float32),
                     "b": (scale * rng.normal(size=(5,))).astype(np.float32)},
            "head": {"v": (scale * rng.normal(size=(3,))).astype(np.float32)}}


def _save(path, params, fp="base", extra=None, step=0):
    state = {"params": params, **(extra or {})}
    Checkpointer(str(path), max_to_keep=1).save(step, state, {"base_fingerprint": fp})
    return str(path)


def test_export_writes_each_run_policy_alone_with_its_run_and_skips_the_rest(tmp_path):
    runs = [[0.001, 0], [0.001, 1], [0.01, 0]]
    pols = [_policy(i) for i in range(3)]
    stacked = jax.tree.map(lambda *x: np.stack(x), *pols)
    state = {"policy": stacked, "policy_opt": jax.tree.map(np.zeros_like, stacked),
             "step": np.full((3,), 50, np.int32), "alpha": np.array([a for a, _ in runs])}
    src = tmp_path / "rl"
    Checkpointer(str(src), max_to_keep=1).save(50, state, {
        "runs": runs, "method": "single", "base_fingerprint": "fp0"})
    outs = export_policies(str(src), str(tmp_path / "exp"), chunk_bytes=64)  # several slices
    assert outs == [str(tmp_path / "exp" / f"run_{r}") for r in range(3)]
    for r, out in enumerate(outs):
        got, meta = restore_params(out)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), pols[r])
        assert (meta["alpha"], meta["seed"], meta["run"], meta["rl_step"]) == (*runs[r], r, 50)
        assert meta["base_fingerprint"] == "fp0" and meta["method"] == "single"
        assert set(Checkpointer(out, read_only=True).array_metadata()) == {"params"}
    mtime = os.path.getmtime(outs[0])
    assert export_policies(str(src), str(tmp_path / "exp")) == outs  # a rerun keeps them
    assert os.path.getmtime(outs[0]) == mtime
    bad = tmp_path / "bad"
    Checkpointer(str(bad), max_to_keep=1).save(1, state, {"runs": runs[:2]})
    with pytest.raises(MergeError, match="do not match the 2 runs"):
        export_policies(str(bad), str(tmp_path / "exp2"))
    assert not (tmp_path / "exp2").exists()


@pytest.mark.parametrize("how", ["slerp", "lerp"])
def test_merge_read_in_slices_equals_the_in_memory_merge_and_liti_ends(tmp_path, how):
    init = _policy(0)
    pols = [jax.tree.map(lambda x, d: x + d, init, _policy(10 + i, 0.1)) for i in range(3)]
    # the init as an SFT-like checkpoint with optimiser state beside its params (skipped)
    init_dir = _save(tmp_path / "init", init, extra={"opt": {"mu": np.ones(4, np.float32)}})
    dirs = [_save(tmp_path / f"p{i}", p) for i, p in enumerate(pols)]
    outs = {0.0: str(tmp_path / "eta0"), 0.3: str(tmp_path / "eta03"), 1.0: str(tmp_path / "eta1")}
    assert merge_checkpoints(init_dir, dirs, outs, how=how, chunk_bytes=32) == outs
    got = {eta: jax.tree.map(np.asarray, restore_params(d)[0]) for eta, d in outs.items()}
    want = jax.tree.map(np.asarray, warp.merge_policies(pols, init, how=how))
    jax.tree.map(np.testing.assert_array_equal, got[1.0], want)      # η = 1: the merge
    jax.tree.map(np.testing.assert_array_equal, got[0.0], init)      # η = 0: the init
    jax.tree.map(lambda g, i, w: np.testing.assert_allclose(g, 0.7 * i + 0.3 * w, rtol=1e-6,
                                                            atol=1e-6), got[0.3], init, want)
    meta = restore_params(outs[0.3])[1]
    assert meta["eta"] == 0.3 and meta["method"] == f"warp_{how}" and len(meta["members"]) == 3
    if how == "lerp":  # the plain average of the policies
        jax.tree.map(lambda g, *p: np.testing.assert_allclose(g, np.mean(p, 0), rtol=1e-6,
                                                              atol=1e-6), got[1.0], *pols)


def test_merge_refuses_other_shapes_bases_and_bad_eta_writing_nothing(tmp_path):
    init_dir = _save(tmp_path / "init", _policy(0))
    good = _save(tmp_path / "good", _policy(1))
    other = _policy(2)
    other["body"]["w"] = other["body"]["w"][:5]
    cases = [
        ([good, _save(tmp_path / "shape", other)], {}, r"body/w is \(5, 5\) float32"),
        ([good, _save(tmp_path / "base", _policy(3), fp="other")], {}, "descends from base other"),
        ([good, str(tmp_path / "missing")], {}, "missing or unreadable"),
        ([good], {"how": "mean"}, "allowed 'slerp', 'lerp'"),
    ]
    out = tmp_path / "out"
    for members, kw, msg in cases:
        with pytest.raises(MergeError, match=msg):
            merge_checkpoints(init_dir, members, {0.5: str(out)}, **kw)
        assert not out.exists()
    with pytest.raises(MergeError, match=r"η=1.5 out of range \[0, 1\]"):
        merge_checkpoints(init_dir, [good], {1.5: str(out)})
    assert not out.exists()
