"""Runs killed from outside: a real `python -m warm_jax.main` (the demo with the tiny override) is
SIGKILLed at named points — inside stages, mid-save, mid-export, mid temp-file — and at random
moments, fails on a full disk, meets a second launch on its work directory, and is resumed each
time. At the end its parameters, logs and claims must equal those of an uninterrupted run."""
import glob
import json
import os
import random
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from conftest import REPO, demo_cmd, run_demo, subprocess_env
from warm_jax.checkpoint import Checkpointer
from warm_jax.metrics import read_jsonl

# each entry: what the next launch meets. ("kill", point): the process SIGKILLs itself there
# (`fileio.kill_point`; "@ms" = from a timer, so it lands inside the operation that follows)
CHAIN_FAST = [
    ("kill", "fit.step#12"),            # inside pretraining, before its first checkpoint
    ("kill", "checkpoint.save#2@3"),    # mid-save (the SFT trajectory's first checkpoint)
    ("kill", "rm.export#2"),            # mid-export: member 0 exported, member 1 not
    ("enospc", "analysis.jsonl"),       # the disk fills while averaging writes its analysis
    ("kill", "write.tmp#3"),            # a temporary file written, not yet renamed
    ("kill", "rl.chunk#1"),             # RL rows logged past the last checkpoint
    ("kill", "warp.chunk#1"),           # WARP: an iteration's rows logged, nothing merged yet
    ("random", 2.0),                    # SIGKILL from outside at a random moment (if still running)
]
# every stage's kill points in pipeline order (each is still ahead when its launch starts), then
# random kills
CHAIN_SLOW = [
    ("kill", "fit.step#5"), ("kill", "fit.step#40"), ("kill", "checkpoint.save#4@1"),
    ("kill", "rm.export#1"), ("kill", "average.write#2"), ("enospc", "bon.jsonl"),
    ("kill", "write.tmp#4"), ("kill", "rl.chunk#2"), ("random", 1.0), ("random", 4.0),
    ("random", 8.0),
]


def _tree_files(wd, pattern):
    return sorted(os.path.relpath(p, wd) for p in glob.glob(os.path.join(wd, pattern),
                                                             recursive=True))


def _checkpoint_dirs(wd):
    """Every orbax checkpoint directory (one holding numbered step directories)."""
    out = []
    for root, dirs, _ in os.walk(wd):
        if any(d.isdigit() for d in dirs) and os.path.basename(root) != "tb":
            out.append(root)
    return sorted(out)


def _run_chain(wd, chain, seed=0):
    """Apply each fault in turn; returns the log of what happened."""
    rng = random.Random(seed)
    happened = []
    for kind, arg in chain:
        if kind == "kill":
            r = run_demo(wd, env=subprocess_env(WARM_JAX_KILL_AT=arg))
            assert r.returncode == -signal.SIGKILL, (
                f"kill point {arg} was never reached (rc {r.returncode}): {r.stderr[-1500:]}")
            assert f"kill_point: SIGKILL at {arg.split('#')[0].split('@')[0]}" in r.stderr
        elif kind == "enospc":
            r = run_demo(wd, env=subprocess_env(WARM_JAX_FAULT=f"enospc:{arg}"))
            assert r.returncode == 1, r.stderr[-2000:]
            assert "disk is full" in r.stderr and arg in r.stderr and "Traceback" not in r.stderr
        elif kind == "random":
            p = subprocess.Popen(demo_cmd(wd), cwd=REPO, env=subprocess_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                p.wait(timeout=arg + rng.uniform(0, 6))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
            p.stderr.close()
        happened.append((kind, arg))
    r = run_demo(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    return happened


def _check_same_as_uninterrupted(wd, ref):
    # every log parses, has no torn line and no duplicated (step, run) row; and equals the
    # uninterrupted run's, row for row
    logs = _tree_files(ref, "**/*.jsonl")
    assert logs == _tree_files(wd, "**/*.jsonl")
    for rel in logs:
        raw = open(os.path.join(wd, rel), "rb").read()
        assert raw == b"" or raw.endswith(b"\n"), f"{rel}: torn last line"
        rows = read_jsonl(os.path.join(wd, rel))
        if rel.endswith("train.jsonl"):
            keys = [(r["step"], r.get("run_alpha"), r.get("seed")) for r in rows]
            assert len(keys) == len(set(keys)), f"{rel}: duplicated rows"
        assert rows == read_jsonl(os.path.join(ref, rel)), f"{rel} differs from the reference"
    assert json.load(open(os.path.join(wd, "claims.json"))) == \
        json.load(open(os.path.join(ref, "claims.json")))
    # the parameters every stage ends with are bit-identical; every checkpoint names its base
    ckpts = _checkpoint_dirs(wd)
    assert [os.path.relpath(c, wd) for c in ckpts] == \
        [os.path.relpath(c, ref) for c in _checkpoint_dirs(ref)]
    for c in ckpts:
        ck = Checkpointer(c, read_only=True)
        for step in ck.all_steps():
            assert ck.restore_meta(step).get("base_fingerprint"), f"{c}/{step}: no fingerprint"
        mine, theirs = _restore(c), _restore(os.path.join(ref, os.path.relpath(c, wd)))
        assert len(mine) == len(theirs)
        for x, y in zip(mine, theirs):
            np.testing.assert_array_equal(x, y, err_msg=c)
    assert not glob.glob(os.path.join(wd, "**", "*.tmp-*"), recursive=True), "temporary files"
    assert not glob.glob(os.path.join(wd, "**", "*orbax-checkpoint-tmp*"), recursive=True)


def _restore(directory):
    """Every array of the latest step (parameters, optimiser and RL state alike), on one device."""
    import jax
    ck = Checkpointer(directory, read_only=True)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev),
                          ck.array_metadata(ck.latest_step()))
    return [np.asarray(x) for x in jax.tree.leaves(ck.restore(None, target)[0])]


def test_sigkill_matrix_resumes_to_identical_results(tiny_demo, tmp_path):
    wd = str(tmp_path / "killed")
    happened = _run_chain(wd, CHAIN_FAST)
    assert len(happened) == len(CHAIN_FAST)
    _check_same_as_uninterrupted(wd, tiny_demo)


@pytest.mark.slow
def test_sigkill_matrix_long(tiny_demo, tmp_path):
    wd = str(tmp_path / "killed_long")
    _run_chain(wd, CHAIN_SLOW, seed=1)
    _check_same_as_uninterrupted(wd, tiny_demo)


def test_second_launch_onto_locked_outputs_fails_at_once(tiny_demo, tmp_path):
    """While one launch writes a work directory, another onto it stops with a clear message and
    writes nothing; the first is unharmed."""
    wd = str(tmp_path / "twice")
    first = subprocess.Popen(demo_cmd(wd), cwd=REPO, env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not glob.glob(os.path.join(wd, ".locks", "*")) and time.time() < deadline:
            time.sleep(0.2)
        t0 = time.time()
        second = run_demo(wd)
        assert second.returncode == 1, second.stderr[-2000:]
        assert "is being written by another launch (pid" in second.stderr, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        assert time.time() - t0 < 60
        assert first.poll() is None, "the first launch was disturbed"
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        first.stderr.close()


def test_sigterm_saves_and_exits_with_143_then_resumes(tiny_demo, tmp_path):
    """SIGTERM during SFT saves and exits with 143; the rerun ends with the SFT stage bit-identical
    to the uninterrupted tiny demo's (what follows SFT is a function of it: the SIGKILL matrix
    above resumes whole pipelines to identical claims)."""
    wd = str(tmp_path / "term")
    to_sft = "--gin.warm_jax.run.stages={'pretrain': @warm_jax.pretrain, 'sft': @warm_jax.sft}"
    p = subprocess.Popen(demo_cmd(wd, to_sft), cwd=REPO, env=subprocess_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(wd, "sft", "train.jsonl")) and time.time() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=300)[1]
    assert p.returncode in (143, 0), err[-2000:]
    if p.returncode == 143:
        assert "preempted:" in err and "rerun the same command to resume" in err
    r = run_demo(wd, to_sft)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = lambda f: read_jsonl(os.path.join(tiny_demo, "sft", f))  # noqa: E731
    assert read_jsonl(os.path.join(wd, "sft", "train.jsonl")) == ref("train.jsonl")
    # evaluations: the preempted run also evaluated at the step it saved; at the shared steps the
    # numbers agree to float32 rounding, not bit for bit (KL 0.08609439 against 0.08609451 at step
    # 8: the resumed process compiles the evaluation again), which no claim can resolve
    ours_eval = {r["step"]: r for r in read_jsonl(os.path.join(wd, "sft", "eval.jsonl"))}
    for row in ref("eval.jsonl"):
        got = ours_eval[row["step"]]
        assert got["sample"] == row["sample"], row["step"]
        for k in ("kl", "gold_reward", "length"):
            assert got[k] == pytest.approx(row[k], rel=1e-5, abs=1e-6), (row["step"], k)
    ours, theirs = (Checkpointer(os.path.join(w, "sft", "checkpoints"), read_only=True)
                    for w in (wd, tiny_demo))
    assert ours.latest_step() == theirs.latest_step()
    a, _ = ours.restore(ours.latest_step())
    b, _ = theirs.restore(theirs.latest_step())
    flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b) and all(np.array_equal(x, y) for x, y in zip(flat_a, flat_b))
