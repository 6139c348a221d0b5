"""The gin entry point end to end with the tiny override: pretrain -> SFT, resumable, configs saved."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from warm_jax.data.real import default_hh_path
from warm_jax.main import rewrite_gin_args
from warm_jax.metrics import read_jsonl


def _run(workdir, *extra, experiment="demo", tiny="tiny"):
    cmd = [sys.executable, "-m", "warm_jax.main", f"--gin_file=experiments/{experiment}.gin",
           f"--gin_file=experiments/{tiny}.gin", f"--gin.WORKDIR='{workdir}'", *extra]
    env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=REPO)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_demo_gin_tiny_end_to_end_and_rerun_skips(tmp_path):
    wd = str(tmp_path / "run")
    r = _run(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ("config.gin", "operative_config.gin", "timings.json", "pretrain/train.jsonl",
              "sft/train.jsonl", "sft/eval.jsonl", "rm/clean/eval.jsonl", "rm/corrupt/eval.jsonl",
              "rm/corrupt/members/member_1"):
        assert os.path.exists(os.path.join(wd, f)), f
    assert "pretrain/OptimConfig.learning_rate = 0.003" in open(os.path.join(wd, "operative_config.gin")).read()
    assert sorted(os.listdir(os.path.join(wd, "sft", "checkpoints"))) == ["12", "8"]
    ev = read_jsonl(os.path.join(wd, "sft", "eval.jsonl"))
    assert [e["step"] for e in ev] == [0, 8, 12] and ev[0]["kl"] == 0.0
    before = os.path.getmtime(os.path.join(wd, "sft", "eval.jsonl"))
    r2 = _run(wd)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert os.path.getmtime(os.path.join(wd, "sft", "eval.jsonl")) == before, "finished stage redone"
    assert len(read_jsonl(os.path.join(wd, "pretrain", "train.jsonl"))) == 2, "pretrain re-ran"


@pytest.mark.skipif(default_hh_path() is None, reason="HH-RLHF sample not found (WARM_HH_PATH)")
def test_hh_experiment_tiny_smoke(tmp_path):
    wd = str(tmp_path / "hh")
    r = _run(wd, experiment="hh_rm", tiny="tiny_hh")
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(json.load(open(os.path.join(wd, "timings.json")))) == {"pretrain", "sft", "rm"}
    rows = read_jsonl(os.path.join(wd, "rm", "clean", "eval.jsonl"))
    assert [r["member"] for r in rows] == [0, 1] and all(0 <= r["test"] <= 1 for r in rows)


def test_bad_gin_value_fails_at_start_naming_the_field(tmp_path):
    r = _run(str(tmp_path / "bad"), "--gin.pretrain/warm_jax.OptimConfig.learning_rate=-1.0")
    assert r.returncode != 0
    assert "OptimConfig.learning_rate=-1.0 is out of range: allowed (0.0, 10.0]" in r.stderr


def test_rewrite_gin_args():
    assert rewrite_gin_args(["x", "--gin.A=1", "--gin_file=f"]) == ["x", "--gin_bindings=A = 1",
                                                                    "--gin_file=f"]
    with pytest.raises(ValueError, match="expected --gin.NAME=VALUE"):
        rewrite_gin_args(["--gin.A"])
