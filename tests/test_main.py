"""The demo's real gin files end to end with the tiny override: every stage, every output, claims,
the report regenerated from JSONL alone, the notebook, resumption, and the launchers."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, run_demo
from launch.local import run_local
from launch.sweep import SWEEPS, product_sweep
from launch.xm_launch import job_specs
from warm_jax.checkpoint import Checkpointer
from warm_jax.data.real import default_hh_path
from warm_jax.eval.claims import REGISTRY
from warm_jax.main import rewrite_gin_args
from warm_jax.metrics import read_jsonl

# the tiny demo's figures (clean labels only: no corruption figure), each as PNG and PDF
FIGURES = tuple(f"{name}.{ext}" for name in ("hacking", "lmc", "acc_vs_m", "bon", "gao",
                                             "rl_steps", "pareto", "winrates", "warp")
                for ext in ("png", "pdf"))


def _run(workdir, *extra, experiment="demo", tiny="tiny"):
    return run_demo(workdir, *extra, experiment=experiment, tiny=tiny)


def test_demo_writes_every_output(tiny_demo):
    wd = tiny_demo
    for f in ("config.gin", "operative_config.gin", "timings.json", "run_info.json", "report.md",
              "claims.json", "sft/eval.jsonl", "rm/clean/seed_1/eval.jsonl",
              "rm/clean/seed_0/analysis.jsonl", "rm/clean/seed_1/averages/warm_M2",
              "rl/clean/bon.jsonl", "rl/clean/single/final.jsonl", "rl/clean/single/eval.jsonl",
              "rl/clean/warm_M2/eval_samples.npz"):
        assert os.path.exists(os.path.join(wd, f)), f
    for f in FIGURES:
        assert os.path.getsize(os.path.join(wd, "figures", f)) > 1000, f
    assert sorted(os.listdir(os.path.join(wd, "figures"))) == sorted(FIGURES)
    claims = json.load(open(os.path.join(wd, "claims.json")))
    assert [c["claim"] for c in claims] == list(REGISTRY)
    assert all(set(c) >= {"claim", "finding", "paper_ref", "outcome", "effect", "ci", "per_seed",
                          "n_seeds", "n_units", "rule"} for c in claims)
    assert {c["outcome"] for c in claims} <= {"reproduced", "contradicted", "inconclusive", None}
    decided = [c for c in claims if c["outcome"] is not None]
    assert len(decided) >= 8 and all(c["n_seeds"] == 2 and len(c["per_seed"]) == 2 and
                                     c["ci"][0] <= c["effect"] <= c["ci"][1] for c in decided)
    assert "pretrain/OptimConfig.learning_rate = 0.003" in open(
        os.path.join(wd, "operative_config.gin")).read()
    assert set(json.load(open(os.path.join(wd, "timings.json")))) == {
        "pretrain", "sft", "ood_pairs", "rm_clean", "average_clean", "best_of_n", "rl", "warp",
        "report"}
    assert not os.path.exists(os.path.join(wd, "rm", "corrupt"))   # FULL=1's population


def test_full_demo_stages_tiny(tiny_demo, tmp_path):
    """FULL=1's own stages (tiny), on a copy of the tiny demo's shared init: the corrupt-label
    reward models, a clean population with more members than the corrupt one (FULL: 10 against
    6; tiny: 7 against 2) and WARM of all of them, the probe and Baklava ablations (no linear probe, members
    from their own fresh heads; every member from one SFT checkpoint), the α sweep, best-of-N and
    RL against the corrupt-label RMs, and the claims decided on them."""
    wd = str(tmp_path / "full")
    top = {"rl", "report.md", "claims.json", "figures"}
    shutil.copytree(tiny_demo, wd, ignore=lambda d, names: [
        n for n in names if (d == tiny_demo and n in top) or (d.endswith("/rm") and n == "clean")])
    stages = ("{'rm_clean': @clean/warm_jax.train_reward_models, "
              "'rm_corrupt': @corrupt/warm_jax.train_reward_models, "
              "'average_clean': @clean/warm_jax.average_reward_models, "
              "'average_corrupt': @corrupt/warm_jax.average_reward_models, "
              "'rm_noprobe': @noprobe/warm_jax.train_reward_models, "
              "'average_noprobe': @noprobe/warm_jax.average_reward_models, "
              "'rm_onesft': @onesft/warm_jax.train_reward_models, "
              "'average_onesft': @onesft/warm_jax.average_reward_models, "
              "'best_of_n_corrupt': @corrupt/warm_jax.best_of_n, "
              "'rl': @warm_jax.train_policies, 'rl_corrupt': @corrupt/warm_jax.train_policies, "
              "'report': @warm_jax.report}")
    r = _run(wd, f"--gin.warm_jax.run.stages={stages}",
             "--gin.warm_jax.PolicyConfig.sweep_alphas=(0.001, 0.01, 0.1)",
             "--gin.RL_METHODS=('single', 'warm_M2', 'warm_M7')", experiment="demo_full",
             tiny="tiny_full")
    assert r.returncode == 0, r.stderr[-3000:]
    # the clean population's own diversity (gin scope `clean/`): 7 members; corrupt keeps 2
    operative = open(os.path.join(wd, "operative_config.gin")).read()
    assert ("clean/DiversityConfig.num_members = %CLEAN_NUM_MEMBERS" in operative
            and "\nCLEAN_NUM_MEMBERS = 7\n" in operative and "\nNUM_MEMBERS = 2\n" in operative)
    for rm, n in (("clean", 7), ("corrupt", 2)):
        rows = read_jsonl(os.path.join(wd, "rm", rm, "seed_1", "eval.jsonl"))
        assert [r["member"] for r in rows] == list(range(n)), rm
    for s in (0, 1):
        # the first members train exactly as in a population of two (their seeds come from their
        # index), and WA / ENS of all members are those of the first two (`analysis_members`)
        before, now = (read_jsonl(os.path.join(w, "rm", "clean", f"seed_{s}", f))
                       for w in (tiny_demo, wd) for f in ("eval.jsonl",))
        assert now[:2] == before
        before, now = ([r for r in read_jsonl(os.path.join(w, "rm", "clean", f"seed_{s}",
                                                           "analysis.jsonl"))
                        if r["analysis"] in ("corruption", "units")] for w in (tiny_demo, wd))
        assert now == before
        meta = Checkpointer(os.path.join(wd, "rm", "clean", f"seed_{s}", "averages", "warm_M7"),
                            read_only=True).restore_meta()
        assert sorted(meta["member_indices"]) == list(range(7))
    final = read_jsonl(os.path.join(wd, "rl", "clean", "warm_M7", "final.jsonl"))
    assert {(r["run_alpha"], r["seed"]) for r in final} == {(0.001, 0), (0.001, 1)}
    noprobe = os.path.join(wd, "rm", "clean_noprobe", "seed_1")
    assert not os.path.exists(os.path.join(noprobe, "linear_probe"))
    assert Checkpointer(os.path.join(noprobe, "members", "member_0")).restore_meta()["probe"] is False
    onesft = read_jsonl(os.path.join(wd, "rm", "clean_onesft", "seed_0", "eval.jsonl"))
    assert {r["init_step"] for r in onesft} == {12} and all("ood" in r for r in onesft)
    # the sweep: RL_SWEEP_METHODS at every sweep α; corrupt-label RL at ALPHAS only
    for rm, alphas in (("clean", {0.001, 0.01, 0.1}), ("corrupt", {0.001})):
        for m in ("single", "warm_M2"):
            final = read_jsonl(os.path.join(wd, "rl", rm, m, "final.jsonl"))
            assert {r["run_alpha"] for r in final} == alphas and len(final) == 2 * len(alphas)
    assert {r["method"] for r in read_jsonl(os.path.join(wd, "rl", "corrupt", "bon.jsonl"))} == {
        "single", "warm_M2", "ens_M2", "ens"}
    claims = {c["claim"]: c for c in json.load(open(os.path.join(wd, "claims.json")))}
    for c in ("probe_helps_wa_vs_ens", "baklava_more_diverse", "baklava_helps_wa",
              "warm_lower_best_alpha", "bon_warm_beats_single_corrupt",
              "warm_smaller_fall_corrupt", "win_rate_warm_vs_sft_corrupt"):
        assert claims[c]["n_seeds"] == 2 and claims[c]["outcome"] is not None, claims[c]
    assert claims["warm_lower_best_alpha"]["extra"]["alphas"] == [0.001, 0.01, 0.1]
    # the comparisons keep the pinned WARM (tiny: warm_M2); the M beyond it has its own claims
    assert claims["warm_smaller_fall"]["extra"]["a"] == "warm_M2"
    for c in ("m10_delays_hacking", "m10_same_peak"):
        assert claims[c]["n_seeds"] == 2 and claims[c]["outcome"] is not None, claims[c]
        assert (claims[c]["extra"]["a"], claims[c]["extra"]["b"]) == ("warm_M7", "warm_M2")
        assert claims[c]["extra"]["alphas"] == [0.001]
    report = open(os.path.join(wd, "report.md")).read()
    assert "## Ablations" in report and "flipped labels" in report
    assert "## WARM beyond M = 6: warm_M7 against warm_M2" in report
    for f in ("alpha.png", "bon_corrupt.png", "pareto_corrupt.png", "winrates_corrupt.png",
              "m10.png"):
        assert os.path.getsize(os.path.join(wd, "figures", f)) > 1000, f


def test_report_regenerates_from_jsonl_alone(tiny_demo, tmp_path):
    wd = str(tmp_path / "copy")
    shutil.copytree(tiny_demo, wd, ignore=shutil.ignore_patterns("checkpoints", "members",
                                                                 "averages", "*.npz", "tb"))
    before = json.load(open(os.path.join(wd, "claims.json")))
    for f in ("report.md", "claims.json"):
        os.remove(os.path.join(wd, f))
    shutil.rmtree(os.path.join(wd, "figures"))
    r = subprocess.run([sys.executable, "-m", "warm_jax.report", wd], cwd=REPO, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.load(open(os.path.join(wd, "claims.json"))) == before
    assert sorted(os.listdir(os.path.join(wd, "figures"))) == sorted(FIGURES)


def test_notebook_executes_on_a_run(tiny_demo):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(os.path.join(REPO, "notebooks", "analysis.ipynb"), as_version=4)
    # opened from notebooks/, with the work directory given relative to the repository root,
    # two methods and one seed picked
    rel = os.path.relpath(tiny_demo, REPO)
    nb.cells[1].source = (f"WORKDIR = {rel!r}\nMETHODS = ['single', 'warm_M2']\nSEEDS = [0]\n"
                          "SPLIT = 'validation'")
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    # every figure of the tiny demo's report, drawn from the picked rows
    assert f"{len(FIGURES) // 2} figures" in outputs, outputs[-2000:]
    assert "seeds: [0, 1]" in outputs and "clean validation [" in outputs


def test_rerun_skips_finished_stages(tiny_demo):
    mark = os.path.join(tiny_demo, "rl", "clean", "single", "final.jsonl")
    before = os.path.getmtime(mark)
    timings = json.load(open(os.path.join(tiny_demo, "timings.json")))
    r = _run(tiny_demo)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.getmtime(mark) == before, "a finished stage was redone"
    assert len(read_jsonl(os.path.join(tiny_demo, "pretrain", "train.jsonl"))) == 2
    # a skipped stage says so and keeps the time it took when it ran; the launch ends with the
    # stage times, the primary claims and where the report is
    assert "    pretrain: skipped, finished earlier with the same configuration" in r.stdout
    after = json.load(open(os.path.join(tiny_demo, "timings.json")))
    assert {k: v for k, v in after.items() if k != "report"} == {
        k: v for k, v in timings.items() if k != "report"}
    assert "=== done: 1 of 9 stages ran in this launch" in r.stdout, r.stdout[-2000:]
    assert "primary rl_single_hacking:" in r.stdout and "report: " in r.stdout
    info = json.load(open(os.path.join(tiny_demo, "run_info.json")))
    assert [launch["stages_run"] for launch in info["launches"]][-1] == ["report"]
    assert info["commit"] and info["cpu"]


def test_a_refused_launch_leaves_the_runs_record_as_it_was(tiny_demo, tmp_path):
    """`--gin.SEED=1` onto the finished seed-0 run: the first stage refuses (its recorded
    configuration differs) and config.gin, operative_config.gin, run_info.json and timings.json
    are byte for byte what they were."""
    wd = tmp_path / "run"
    records = ("config.gin", "operative_config.gin", "run_info.json", "timings.json")
    wd.mkdir()
    for f in records:
        shutil.copy(os.path.join(tiny_demo, f), wd / f)
    (wd / "pretrain").mkdir()
    shutil.copy(os.path.join(tiny_demo, "pretrain", "stage_config.json"), wd / "pretrain")
    before = {f: (wd / f).read_bytes() for f in records}
    r = _run(str(wd), "--gin.SEED=1")
    assert r.returncode == 1, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and "stage pretrain:" in line[0] and "seed: 0 -> 1" in line[0], line
    assert {f: (wd / f).read_bytes() for f in records} == before
    assert sorted(os.listdir(wd / "pretrain")) == ["stage_config.json"]


@pytest.mark.skipif(default_hh_path() is None, reason="HH-RLHF sample not found (WARM_HH_PATH)")
def test_hh_experiment_tiny_smoke(tmp_path):
    wd = str(tmp_path / "hh")
    r = _run(wd, experiment="hh_rm", tiny="tiny_hh")
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(json.load(open(os.path.join(wd, "timings.json")))) == {"pretrain", "sft", "rm"}
    rows = read_jsonl(os.path.join(wd, "rm", "clean", "seed_0", "eval.jsonl"))
    assert [r["member"] for r in rows] == [0, 1] and all(0 <= r["test"] <= 1 for r in rows)


def test_bad_gin_value_fails_at_start_naming_the_field(tmp_path):
    r = _run(str(tmp_path / "bad"), "--gin.pretrain/warm_jax.OptimConfig.learning_rate=-1.0")
    assert r.returncode == 2
    assert r.stderr == ("error: stage pretrain: pretrain/warm_jax.OptimConfig.learning_rate = -1.0: "
                        "allowed (0.0, 10.0]\n")
    assert not os.path.exists(tmp_path / "bad" / "pretrain" / "checkpoints" / "0")


def test_rewrite_gin_args():
    assert rewrite_gin_args(["x", "--gin.A=1", "--gin_file=f"]) == ["x", "--gin_bindings=A = 1",
                                                                    "--gin_file=f"]
    with pytest.raises(ValueError, match="expected --gin.NAME=VALUE"):
        rewrite_gin_args(["--gin.A"])


def test_sweep_product_local_runner_and_xmanager_jobs(tmp_path):
    units = product_sweep("s", ["experiments/demo.gin"], {"SEED": [0, 1], "ALPHAS": [(0.01,), (0.1,)]},
                          root=str(tmp_path))
    assert len(units) == 4 and len({u.workdir for u in units}) == 4
    assert units[1].argv()[-3:] == ["--gin.SEED=0", "--gin.ALPHAS=(0.1,)",
                                    f"--gin.WORKDIR={units[1].workdir!r}"]
    jobs = job_specs(units, accelerator="a100", count=8)
    assert [j["name"] for j in jobs] == [u.name for u in units]
    assert jobs[0]["args"]["gin.SEED"] == "0" and jobs[0]["accelerator"] == "A100"
    with pytest.raises(ValueError, match="accelerator='tpu9'"):
        job_specs(units, accelerator="tpu9")
    assert all(len(SWEEPS[k](str(tmp_path))) >= 3 for k in SWEEPS)
    # the local runner: a failing unit is reported, a finished one is skipped on the next call
    noop = tmp_path / "noop.gin"
    noop.write_text("WORKDIR = 'unset'\nwarm_jax.run.workdir = %WORKDIR\nwarm_jax.run.stages = {}\n")
    ok = product_sweep("ok", [str(noop)], {"warm_jax.run.compilation_cache": [False]},
                       root=str(tmp_path))[0]
    bad = product_sweep("bad", [str(noop)], {"warm_jax.run.nonexistent": [2]}, root=str(tmp_path))[0]
    env = dict(os.environ, PYTHONPATH=REPO)
    codes = run_local([ok, bad], parallel=2, cwd=REPO, env=env)
    assert codes == {ok.name: 0, bad.name: codes[bad.name]} and codes[bad.name] != 0
    assert os.path.exists(os.path.join(ok.workdir, "DONE"))
    assert "nonexistent" in open(os.path.join(bad.workdir, "launch.log")).read()
    assert run_local([ok, bad], parallel=2, cwd=REPO, env=env) == {bad.name: codes[bad.name]}


def test_readme_claims_block_is_generated_from_claims_json(tiny_demo, tmp_path):
    from warm_jax.layout import RunLayout
    from warm_jax.eval.tables import (README_BEGIN, README_END, claims_block, rewrite_readme,
                                      run_record)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nstale typed table\n{README_END}\noutro\n")
    rewrite_readme(str(readme), claims_block(run_record(RunLayout(tiny_demo))))
    text = readme.read_text()
    claims = json.load(open(os.path.join(tiny_demo, "claims.json")))
    assert "stale typed table" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    n_yes = sum(c["outcome"] == "reproduced" for c in claims)
    assert f"{n_yes} reproduced" in text and "chain seeds [0, 1]" in text
    assert all(f"| {c['claim']} |" in text or f"| **{c['claim']}** |" in text for c in claims)
    assert "commit " in text and "chance alone" in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no claims markers"):
        rewrite_readme(str(readme), "x")


CACHE_SCRIPT = r"""
import json, os, sys
import jax, jax.numpy as jnp
from warm_jax.main import run

def make_stage(tag):
    def stage(workdir):
        f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())  # a new closure: jit's memory cache misses
        y = float(f(jnp.arange(64.0).reshape(8, 8) / 64))
        n = len(os.listdir(os.path.join(workdir, "xla_cache")))
        with open(os.path.join(workdir, tag + ".json"), "w") as fh:
            json.dump({"y": y, "entries": n}, fh)
    return stage

run(workdir=sys.argv[1], stages={"a": make_stage("a"), "b": make_stage("b")})
"""


def test_run_caches_compiled_programs_in_the_workdir(tmp_path):
    """Two stages compiling the same program: the second finds it in workdir/xla_cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")
           and k != "JAX_COMPILATION_CACHE_DIR"}
    wd = tmp_path / "run"
    subprocess.run([sys.executable, "-c", CACHE_SCRIPT, str(wd)], env=dict(env, PYTHONPATH=REPO),
                   check=True, capture_output=True, text=True, timeout=300)
    a, b = (json.load(open(wd / f"{t}.json")) for t in "ab")
    assert a["entries"] >= 1 and b["entries"] == a["entries"]  # nothing new compiled for b
    assert a["y"] == b["y"]


@pytest.mark.parametrize("tiny", [(), ("experiments/tiny_full.gin",)])
def test_full_demo_clean_ladder_extends_the_demo_ladder(tiny):
    """FULL=1's clean members start with the demo's ladder (the first NUM_MEMBERS train as in the
    default demo), add members past the pinned WARM M = 6, and average up to all of them."""
    import gin
    from warm_jax.eval.claim_data import WARM_M
    from warm_jax.main import GIN_DIR, parse_gin
    try:
        parse_gin(["experiments/demo_full.gin", *tiny], [], [GIN_DIR, "."])
        macro = lambda m: gin.query_parameter(f"{m}/gin.macro.value")  # noqa: E731
        n, n_clean, ladder = macro("NUM_MEMBERS"), macro("CLEAN_NUM_MEMBERS"), macro("RM_LADDER")
        assert n_clean > WARM_M >= n and len(macro("RM_LADDER_CLEAN")) == n_clean
        assert macro("RM_LADDER_CLEAN")[:n] == ladder
        assert max(macro("CLEAN_M_VALUES")) == n_clean and max(macro("M_VALUES")) == n
    finally:
        gin.clear_config()
