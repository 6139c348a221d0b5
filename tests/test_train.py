import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from warm_jax import sharding as shd
from warm_jax.checkpoint import Checkpointer, abstract_with_shardings, assign_with_fallback, flatten
from warm_jax.data.pipeline import batch_iterator
from warm_jax.losses import make_lm_loss
from warm_jax.metrics import MetricsWriter, read_jsonl
from warm_jax.models import LanguageModel, RewardModel, preset
from warm_jax.train import (NonFiniteError, OptimConfig, create_train_state, fit, jit_train_step,
                            make_optimizer, make_train_step, put_batch)

CFG = preset("tiny")


def _lm_setup(mesh, seed=0, optim=OptimConfig(learning_rate=1e-2)):
    lm = LanguageModel(CFG)
    tx = make_optimizer(optim)
    toks = jnp.ones((1, 8), jnp.int32)
    state, sh = create_train_state(lambda r: lm.init(r, toks)["params"], tx, mesh,
                                   jax.random.PRNGKey(seed))
    return lm, tx, state, sh


def _batch(B=8, T=12, seed=0):
    rng = np.random.default_rng(seed)
    toks = rng.integers(4, CFG.vocab_size, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, 9:] = 0
    return {"tokens": toks, "mask": mask, "loss_mask": mask.copy()}


def test_sharded_step_equals_single_device_and_rules_apply(eight_devices):
    results = []
    for mesh in (shd.make_mesh(data=1, devices=eight_devices[:1]),
                 shd.make_mesh(data=2, fsdp=2, model=2, devices=eight_devices)):
        lm, tx, state, sh = _lm_setup(mesh)
        step = make_train_step(make_lm_loss(lm), tx)
        batch = put_batch(_batch(), mesh)
        step_fn = jit_train_step(step, sh, mesh, batch)
        with shd.activate(mesh):
            state, m = step_fn(state, batch)
        results.append((jax.device_get(state.params), jax.device_get(m), state, mesh))
    (p1, m1, _, _), (p8, m8, st8, mesh8) = results
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m8["grad_norm"], rtol=1e-5)
    # Adam's first update is ~lr * sign(g): near-zero gradients amplify reduction-order noise
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), p1, p8)
    # every parameter is laid out as the rules table says
    wq = st8.params["body"]["layer_0"]["attn"]["wq"]          # (embed, heads, head_dim)
    assert wq.sharding.spec == P("fsdp", "model", None)
    emb = st8.params["body"]["embedding"]                     # (vocab, embed)
    assert emb.sharding.spec == P("model", "fsdp")
    wd = st8.params["body"]["layer_0"]["mlp"]["wd"]           # (mlp, embed)
    assert wd.sharding.spec == P("model", "fsdp")
    mu = st8.opt_state[1].mu["body"]["layer_0"]["mlp"]["wd"]
    assert mu.sharding.spec == P("model", "fsdp"), "optimizer moments follow their parameter"


def test_activation_rule_drops_conflicting_axis():
    assert shd.logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
    assert shd.logical_to_spec(("embed", "mlp")) == P("fsdp", "model")


def test_golden_one_step_regression(eight_devices):
    mesh = shd.make_mesh(data=1, devices=eight_devices[:1])
    lm, tx, state, sh = _lm_setup(mesh, seed=42)
    step = jax.jit(make_train_step(make_lm_loss(lm), tx))
    state, m = step(state, _batch(seed=42))
    state, m2 = step(state, _batch(seed=43))
    got = (float(m["loss"]), float(m["grad_norm"]), float(m2["loss"]))
    golden = (4.179367, 0.920977, 4.189104)
    assert np.allclose(got, golden, rtol=2e-4), (
        f"golden one-step regression moved: got {got}, golden {golden}. If you changed the model, "
        "initialisation, loss or optimiser ON PURPOSE, update the golden numbers; otherwise a change "
        "broke numerics — hunt the bug before touching the numbers.")


def test_checkpoint_round_trip_bit_exact_with_iterator_state(tmp_path, eight_devices):
    mesh = shd.make_mesh(data=2, fsdp=2, model=2, devices=eight_devices)
    lm, tx, state, sh = _lm_setup(mesh)
    data = _batch(B=16, T=6)
    it = batch_iterator(data, batch_size=4, seed=3)
    next(it), next(it)
    ck = Checkpointer(str(tmp_path / "ckpt"))
    ck.save(7, state, {"data_state": it.get_state(), "base_fingerprint": "abc"})
    expected_next = next(it)
    target = abstract_with_shardings(jax.eval_shape(lambda: state), sh)
    restored, meta = Checkpointer(str(tmp_path / "ckpt")).restore(None, target)
    assert meta["base_fingerprint"] == "abc"
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == b.sharding
    it2 = batch_iterator(data, batch_size=4, seed=3)
    it2.set_state(meta["data_state"])
    got_next = next(it2)
    for k in expected_next:
        np.testing.assert_array_equal(expected_next[k], got_next[k])


def test_checkpoints_are_raw_and_finite_check_covers_host_and_device_leaves(tmp_path,
                                                                           eight_devices):
    from warm_jax.checkpoint import nonfinite_leaves
    # raw arrays: 4 MiB of zeros take 4 MiB on disk (zstd would make them a few KB)
    Checkpointer(str(tmp_path / "z")).save(0, {"params": {"z": jnp.zeros((1 << 20,))}}, {})
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(tmp_path / "z")
               for f in fs)
    assert size >= 4 << 20
    # NaN/Inf found in numpy, CPU single-device (bf16 too) and sharded leaves; ints ignored
    mesh = shd.make_mesh(data=8, devices=eight_devices)
    bad = jax.device_put(jnp.zeros(16).at[3].set(jnp.inf),
                         jax.sharding.NamedSharding(mesh, P("data")))
    tree = {"np": np.array([0.0, np.nan], np.float32), "bf": jnp.array([1, np.nan], jnp.bfloat16),
            "ok": jnp.ones(5), "int": jnp.arange(3), "sharded": bad,
            "sharded_ok": jax.device_put(jnp.ones(16), bad.sharding)}
    assert nonfinite_leaves(tree) == ["bf", "np", "sharded"]


def test_restore_with_fallback_creates_only_the_missing_head():
    toks = jnp.ones((1, 6), jnp.int32)
    from warm_jax.models import unbox
    lm_params = unbox(LanguageModel(CFG).init(jax.random.PRNGKey(0), toks)["params"])
    rm_init = unbox(RewardModel(CFG).init(jax.random.PRNGKey(1), toks, jnp.ones_like(toks))["params"])
    rm, fresh = assign_with_fallback(lm_params, rm_init)
    assert sorted(fresh) == ["reward_head/kernel"]
    for k, v in flatten(rm["body"]).items():
        np.testing.assert_array_equal(v, flatten(lm_params["body"])[k])
    np.testing.assert_array_equal(rm["reward_head"]["kernel"], rm_init["reward_head"]["kernel"])
    # an explicit map can also route a subtree to scratch
    _, fresh2 = assign_with_fallback(lm_params, rm_init, ((r"body/layer_1/.*", None), (r"(.*)", r"\1")))
    assert any(f.startswith("body/layer_1/") for f in fresh2) and "body/embedding" not in fresh2
    bad = dict(lm_params, body=dict(lm_params["body"], embedding=jnp.zeros((3, 3))))
    with pytest.raises(ValueError, match="body/embedding -> body/embedding: source"):
        assign_with_fallback(bad, rm_init)


def test_injected_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, eight_devices):
    mesh = shd.make_mesh(data=8, devices=eight_devices)
    lm, tx, state, sh = _lm_setup(mesh)
    base = make_lm_loss(lm)

    def poisoned(params, batch, rng):  # NaN from the 4th step on, driven by the data
        loss, m = base(params, batch, rng)
        return loss * batch["poison"][0], m

    data = dict(_batch(B=48, T=6), poison=np.array([1.0] * 24 + [np.nan] * 24, np.float32))
    it = batch_iterator(data, batch_size=8, seed=0, shuffle=False)
    ck = Checkpointer(str(tmp_path / "c"))
    writer = MetricsWriter(str(tmp_path), "train", tensorboard=False)
    with pytest.raises(NonFiniteError, match="at step 4; last good checkpoint 2"):
        fit(state=state, state_shardings=sh, train_step=make_train_step(poisoned, tx), mesh=mesh,
            data_iter=it, num_steps=10, checkpointer=ck, writer=writer, ckpt_every=2, log_every=1)
    assert ck.all_steps() == [2]
    target = abstract_with_shardings(jax.eval_shape(lambda: state), sh)
    restored, _ = ck.restore(2, target)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored.params))
    rows = read_jsonl(writer.path)
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_fit_resume_is_bit_identical(tmp_path, eight_devices):
    mesh = shd.make_mesh(data=4, fsdp=2, devices=eight_devices)
    data = _batch(B=32, T=6)

    def run(directory, stop_at=None):
        lm, tx, state, sh = _lm_setup(mesh)
        step = make_train_step(make_lm_loss(lm), tx)
        ck = Checkpointer(directory)
        w = MetricsWriter(directory, tensorboard=False)
        it = batch_iterator(data, batch_size=8, seed=1)
        if stop_at:
            fit(state=state, state_shardings=sh, train_step=step, mesh=mesh, data_iter=it,
                num_steps=stop_at, checkpointer=ck, writer=w, ckpt_every=3)
            lm, tx, state, sh = _lm_setup(mesh)  # a fresh process would rebuild from scratch
            it = batch_iterator(data, batch_size=8, seed=1)
        return fit(state=state, state_shardings=sh, train_step=step, mesh=mesh, data_iter=it,
                   num_steps=9, checkpointer=ck, writer=w, ckpt_every=3)

    a = run(str(tmp_path / "a"))
    b = run(str(tmp_path / "b"), stop_at=6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_linear_probe_freeze_pattern_changes_only_the_head(eight_devices):
    mesh = shd.make_mesh(data=1, devices=eight_devices[:1])
    rm = RewardModel(CFG)
    tx = make_optimizer(OptimConfig(learning_rate=1e-2, frozen=(r"body/.*",)))
    toks = jnp.ones((1, 6), jnp.int32)
    state, sh = create_train_state(lambda r: rm.init(r, toks, jnp.ones_like(toks))["params"], tx,
                                   mesh, jax.random.PRNGKey(0))
    before = jax.device_get(state.params)

    def loss_fn(params, batch, rng):
        r = rm.apply({"params": params}, batch["tokens"], batch["mask"])
        return jnp.mean((r - 1.0) ** 2), {}

    new, _ = jax.jit(make_train_step(loss_fn, tx))(state, _batch())
    after = jax.device_get(new.params)
    for k, v in flatten(before).items():
        changed = not np.array_equal(v, flatten(after)[k])
        assert changed == k.startswith("reward_head/"), k


@pytest.mark.parametrize("kw, msg", [
    (dict(learning_rate=0.0), "OptimConfig.learning_rate=0.0 is out of range: allowed (0.0, 10.0]"),
    (dict(warmup_steps=-1), "OptimConfig.warmup_steps=-1 is out of range: allowed [0, inf]"),
    (dict(frozen=("body/(",)), "OptimConfig.frozen: bad regex 'body/('"),
])
def test_invalid_optim_config(kw, msg):
    with pytest.raises(ValueError) as e:
        OptimConfig(**kw)
    assert msg in str(e.value)


def test_mesh_errors(eight_devices):
    with pytest.raises(ValueError, match="needs 16 devices, only 8 exist"):
        shd.make_mesh(data=4, fsdp=4, devices=eight_devices)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        shd.make_mesh(data=-1, fsdp=-1, devices=eight_devices)
    m = shd.make_mesh(member=2, data=-1, model=2, devices=eight_devices)
    assert dict(m.shape) == {"member": 2, "data": 2, "fsdp": 1, "model": 2}


def test_metrics_writer_jsonl_and_tensorboard(tmp_path):
    with MetricsWriter(str(tmp_path), "m") as w:
        w.write(1, {"loss": np.float32(0.5), "acc": 1})
        w.write(2, {"loss": float("nan"), "samples": ["a b"]})
    rows = read_jsonl(str(tmp_path / "m.jsonl"))
    assert rows[0] == {"step": 1, "loss": 0.5, "acc": 1} and np.isnan(rows[1]["loss"])
    assert os.listdir(tmp_path / "tb" / "m"), "TensorBoard events written"


@pytest.mark.parametrize("env,applied", [({}, True), ({"WARM_JAX_DEFAULT_MALLOC": "1"}, False),
                                         ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, False)])
def test_host_allocator_tuning_applies_unless_opted_out(env, applied):
    import platform
    import subprocess
    import sys
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning is glibc-only (a no-op elsewhere)")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("GLIBC_TUNABLES", "WARM_JAX_DEFAULT_MALLOC")}
    out = subprocess.run([sys.executable, "-c", "from warm_jax.hostmem import tune_host_allocator;"
                          "print(tune_host_allocator())"], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(applied)
