"""The run directory's guarantees, one by one: atomic files, a full disk, torn and duplicated log
rows, locks between processes, stage configurations, reward specs, NaN guards."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO
from warm_jax import fileio, guards
from warm_jax import layout as L
from warm_jax.average.rewards import RewardSpec
from warm_jax.average.soup import AverageError, average_checkpoints, normalise_weights
from warm_jax.checkpoint import Checkpointer, NonFiniteError
from warm_jax.metrics import MetricsWriter, read_jsonl
from warm_jax.average.stage import AverageConfig
from warm_jax.rm.stage import RMConfig


def test_atomic_write_full_disk_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = str(tmp_path / "timings.json")
    fileio.write_json(path, {"pretrain": 1.0})
    monkeypatch.setenv("WARM_JAX_FAULT", "enospc:timings.json")
    with pytest.raises(fileio.WriteError, match=r"could not write .*timings.json.*disk is full.*unchanged"):
        fileio.write_json(path, {"pretrain": 1.0, "sft": 2.0})
    assert json.load(open(path)) == {"pretrain": 1.0}
    assert os.listdir(tmp_path) == ["timings.json"], "a temporary file was left behind"
    monkeypatch.delenv("WARM_JAX_FAULT")  # space freed: the same write goes through
    fileio.write_json(path, {"pretrain": 1.0, "sft": 2.0})
    assert json.load(open(path)) == {"pretrain": 1.0, "sft": 2.0}


def test_a_real_full_disk_on_a_tiny_filesystem(tmp_path):
    """ENOSPC from the kernel, where a tmpfs can be mounted (root in a container that allows it)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]}); the injected "
                    "ENOSPC test covers the same path")
    try:
        path = str(mnt / "report.md")
        fileio.atomic_write(path, "old")
        with pytest.raises(fileio.WriteError, match="disk is full"):
            fileio.atomic_write(path, b"x" * (1 << 20))
        assert open(path).read() == "old" and os.listdir(mnt) == ["report.md"]
    finally:
        subprocess.run(["umount", str(mnt)])


def test_metrics_writer_drops_a_torn_line_and_rewinds_to_the_restored_step(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"step": 10, "loss": 1}\n{"step": 20, "loss": 2}\n{"step": 30, "lo')
    rows = read_jsonl(str(path))  # a reader drops the torn tail too (with a warning)
    assert [r["step"] for r in rows] == [10, 20]
    w = MetricsWriter(str(tmp_path), "train", tensorboard=False)
    w.rewind(10)  # the checkpoint the run resumed from
    w.write(20, {"loss": 2.5})
    w.close()
    assert read_jsonl(str(path)) == [{"step": 10, "loss": 1}, {"step": 20, "loss": 2.5}]


def test_read_jsonl_names_path_and_line_of_a_bad_row(tmp_path):
    p = tmp_path / "eval.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}}\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:2: bad JSONL row"):
        read_jsonl(str(p))
    p.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:2: .*JSON object"):
        read_jsonl(str(p))


_HOLD = textwrap.dedent("""
    import sys, time
    from warm_jax.layout import RunLayout
    with RunLayout(sys.argv[1]).lock("rm/clean/members/member_0"):
        print("held", flush=True)
        time.sleep(30)
""")


def test_locks_exclude_a_second_process_and_allow_disjoint_outputs(tmp_path):
    wd = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, wd], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert holder.stdout.readline().strip() == "held"
        lay = L.RunLayout(wd)
        with pytest.raises(guards.LockedError, match=r"member_0 is being written by another launch "
                                                r"\(pid \d+.*WORKDIR"):
            with lay.lock("rm/clean/members/member_0"):
                pass
        with lay.lock("rm/clean/members/member_1"):  # disjoint output: fine side by side
            with lay.lock("rm/clean/members/member_1"):  # re-entrant in one process
                pass
    finally:
        holder.kill()
        holder.wait()
    with L.RunLayout(wd).lock("rm/clean/members/member_0"):  # the holder died: the lock is free
        pass


def test_stage_config_mismatch_names_fields_and_how_to_start_afresh(tmp_path):
    d = str(tmp_path / "rl" / "clean" / "single")
    guards.check_stage_config(d, "rl", {"alphas": (0.01,), "rl": {"lr": 1e-4}})
    guards.check_stage_config(d, "rl", {"alphas": [0.01], "rl": {"lr": 1e-4}})  # same, as JSON
    with pytest.raises(guards.StageConfigError, match=r"alphas: \[0.01\] -> \[0.003\].*remove .*single"):
        guards.check_stage_config(d, "rl", {"alphas": (0.003,), "rl": {"lr": 1e-4}})


def test_reward_spec_parses_and_prints():
    for text in ("single", "warm_M2", "warm_M10", "greedy", "ens", "wco", "uwo", "ens_M2",
                 "uwo_M3"):
        assert str(RewardSpec.parse(text)) == text
    assert RewardSpec.parse("single").average == "warm_M1"
    assert RewardSpec.parse("warm_M6").m == 6 and RewardSpec.parse("ens").is_ensemble
    # an ensemble of k members reads the members WARM M=k averages; of all members, none
    assert RewardSpec.parse("ens_M2").average == "warm_M2" and RewardSpec.parse("ens_M2").is_ensemble
    assert RewardSpec.parse("ens").average is None
    for bad in ("warm_M0", "warm", "WARM_M2", "ens2", "ens_M0", "greedy_M2", ""):
        with pytest.raises(ValueError, match=r"allowed single \| warm_M<k>"):
            RewardSpec.parse(bad)


def _member(path, value, fingerprint="base0"):
    params = {"params": {"w": jnp.full((4, 3), value, jnp.float32), "b": jnp.zeros((3,))}}
    Checkpointer(path, max_to_keep=1).save(5, params, {"base_fingerprint": fingerprint})
    return path


def _raw_save(path, params, meta):
    """Bypass the finite guard, as a corrupt file on disk would."""
    mngr = ocp.CheckpointManager(path, item_names=("state", "meta"),
                                 options=ocp.CheckpointManagerOptions(
                                     enable_async_checkpointing=False))
    mngr.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(params),
                                         meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()
    mngr.close()


def test_averaging_refuses_nan_members_and_weights_and_missing_fingerprints(tmp_path):
    a = _member(str(tmp_path / "a"), 1.0)
    b = str(tmp_path / "b")
    w = np.ones((4, 3), np.float32)
    w[2, 1] = np.nan
    _raw_save(b, {"params": {"w": w, "b": np.zeros((3,), np.float32)}}, {"base_fingerprint": "base0"})
    out = str(tmp_path / "avg")
    with pytest.raises(AverageError, match=r"non-finite values in \['params/w'\].*member .*/b has "
                                           r"NaN/Inf.*nothing was written"):
        average_checkpoints([a, b], out)
    assert not os.path.exists(out) or Checkpointer(out, read_only=True).latest_step() is None
    for weights in ([np.nan, 1.0], [np.inf, 1.0], [-1.0, 2.0]):
        with pytest.raises(AverageError, match="weights must be finite"):
            normalise_weights(weights, 2)
    c = _member(str(tmp_path / "c"), 3.0, fingerprint=None)
    with pytest.raises(AverageError, match="records no base fingerprint.*allow_base_mismatch"):
        average_checkpoints([a, c], out)
    # a stale average (a member retrained since) is refused, not reused
    d = _member(str(tmp_path / "d"), 2.0)
    average_checkpoints([a, d], out)
    Checkpointer(d, max_to_keep=1).save(9, {"params": {"w": jnp.full((4, 3), 7.0),
                                                      "b": jnp.zeros((3,))}},
                                        {"base_fingerprint": "base0"})
    with pytest.raises(AverageError, match=r"stale average .*member_steps"):
        average_checkpoints([a, d], out)


def test_checkpointer_refuses_to_save_non_finite_values(tmp_path):
    ck = Checkpointer(str(tmp_path / "c"))
    ck.save(1, {"params": {"w": jnp.ones((2,))}})
    with pytest.raises(NonFiniteError, match=r"step 2 .*params/w.*last good checkpoint: 1"):
        ck.save(2, {"params": {"w": jnp.array([1.0, jnp.nan])}})
    assert ck.all_steps() == [1]


def test_rl_stops_on_nan_and_keeps_its_last_finite_checkpoint(toy_init, monkeypatch):
    """NaN injected into the policy after the first chunk: the second chunk's loss is NaN, the
    stage stops naming the step, and the checkpoint of the first chunk stays finite."""
    from warm_jax.average.stage import average_reward_models
    from warm_jax.checkpoint import nonfinite_leaves
    from warm_jax.rl import stage as rl_stage
    from warm_jax.rl.reinforce import RLConfig
    from warm_jax.rm.diversity import DiversityConfig
    from warm_jax.rm.stage import train_reward_models
    wd, task, cfg = toy_init
    train_reward_models(workdir=wd, task=task, model_cfg=cfg,
                        cfg=RMConfig(name="nan", num_steps=10, batch_size=16, probe_steps=5,
                                     diversity=DiversityConfig(num_members=2)))
    average_reward_models(workdir=wd, task=task, model_cfg=cfg,
                          cfg=AverageConfig(name="nan", m_values=(1,), greedy=False, lmc_pairs={},
                                            max_eval_pairs=100))
    real = rl_stage.run_chunk
    calls = []

    def poisoned(step, state, n, *reward_fn):
        calls.append(1)
        if len(calls) > 1:  # traced once per compile: poison every chunk after the first trace
            state = state.replace(policy=jax.tree.map(lambda x: x * jnp.nan, state.policy))
        return real(step, state, n, *reward_fn)

    monkeypatch.setattr(rl_stage, "run_chunk", poisoned)
    kw = dict(task=task, model_cfg=cfg, cfg=rl_stage.PolicyConfig(
        rm_name="nan", methods=("single",), alphas=(0.01,), rl=RLConfig(batch_size=16),
        num_steps=10, chunk=5, log_every=5, eval_prompts=16))
    # first call traces a clean chunk and saves step 5; the rerun traces a poisoned one
    monkeypatch.setattr(rl_stage, "preemption_requested", lambda: True)
    with pytest.raises(guards.Preempted):
        rl_stage.train_policies(workdir=wd, **kw)
    monkeypatch.undo()
    monkeypatch.setattr(rl_stage, "run_chunk", poisoned)
    with pytest.raises(NonFiniteError, match=r"rl nan/single: non-finite \[.*kl.*\] in steps 6..10; "
                                             r"last good checkpoint 5"):
        rl_stage.train_policies(workdir=wd, **kw)
    ck = Checkpointer(os.path.join(wd, "rl", "nan", "single", "checkpoints"), read_only=True)
    assert ck.all_steps() == [5]
    state, _ = ck.restore(5)
    assert nonfinite_leaves(state) == []
    assert not os.path.exists(os.path.join(wd, "rl", "nan", "single", "final.jsonl"))


def test_reward_normalisation_refuses_a_nan_shift():
    from warm_jax.average.rewards import make_reward_function, normalised
    from warm_jax.models import RewardModel, preset
    from warm_jax.models.transformer import unbox
    cfg = preset("toy", d_model=16, d_ff=32, n_layers=1)
    tok = jnp.ones((4, 6), jnp.int32)
    params = unbox(RewardModel(cfg).init(jax.random.PRNGKey(0), tok, tok)["params"])
    params = jax.tree.map(lambda x: x * jnp.nan, params)
    fn = make_reward_function(cfg, params)
    with pytest.raises(FloatingPointError, match="reward normalisation of 'single': 4 of 4"):
        normalised(fn, tok, tok, tok, tok)


def test_rl_refuses_reward_models_of_another_base(tmp_path):
    from warm_jax.models import RewardModel, preset
    from warm_jax.models.transformer import unbox
    from warm_jax.rl.inputs import build_reward_function
    cfg = preset("toy", d_model=16, d_ff=32, n_layers=1)
    tok = jnp.ones((2, 4), jnp.int32)
    params = unbox(RewardModel(cfg).init(jax.random.PRNGKey(0), tok, tok)["params"])
    lay = L.RunLayout(str(tmp_path))
    Checkpointer(lay.average("clean", "warm_M1"), max_to_keep=1).save(
        0, {"params": params}, {"base_fingerprint": "A"})
    assert build_reward_function(lay, "clean", "single", cfg, base_fingerprint="A").kind == "single"
    with pytest.raises(ValueError, match=r"descends from base \['A'\], the policy from B.*"
                                         r"allow_base_mismatch"):
        build_reward_function(lay, "clean", "single", cfg, base_fingerprint="B")


def test_population_data_state_of_another_size_is_refused():
    from warm_jax.data.pipeline import batch_iterator
    from warm_jax.rm.population import StackedIterator
    data = {"x": np.arange(20).reshape(10, 2)}
    three = StackedIterator([batch_iterator(data, batch_size=2, seed=s) for s in range(3)])
    two = StackedIterator([batch_iterator(data, batch_size=2, seed=s) for s in range(2)])
    with pytest.raises(ValueError, match="holds 3 members' iterators, this population has 2"):
        two.set_state(three.get_state())
