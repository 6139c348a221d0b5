"""The real command line, one subprocess per bad input: one line on stderr naming what the user
typed, exit status 2, in seconds, and nothing written (warm_jax.launch_check)."""
import os
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env

DEMO = ["--gin_file=experiments/demo.gin", "--gin_file=experiments/tiny.gin"]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "warm_jax.main", *args], cwd=REPO,
                          env=env or subprocess_env(), capture_output=True, text=True, timeout=120)


def refused(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and r.stdout == ""
    return lines[0]


@pytest.mark.parametrize("binding, says", [
    ("--gin.SEDE=3", "macro SEDE is set but nothing reads it; did you mean SEED?"),
    ("--gin.ALPAHS=(0.1,)", "did you mean ALPHAS?"),
    ("--gin.RL_STEPS=-5", "stage rl: RL_STEPS = -5 (read as warm_jax.PolicyConfig.num_steps): "
                          "an integer >= 1"),
    ("--gin.NUM_MEMBERS=0", "NUM_MEMBERS = 0 (read as warm_jax.DiversityConfig.num_members): "
                            "allowed [1, 64]"),
    ("--gin.ALPHAS=(-1.0,)", "ALPHAS = (-1.0,) (read as warm_jax.PolicyConfig.alphas): distinct "
                             "finite numbers >= 0"),
    ("--gin.SEEDS=()", "stage rm_clean: SEEDS = () (read as warm_jax.RMConfig.seeds)"),
    ("--gin.warm_jax.PolicyConfig.chunk=3", "warm_jax.PolicyConfig.num_steps"),
    ("--gin.BON_METHODS=('single','warm')", "names in single | warm_M<k>"),
    ("--gin.warm_jax.WARPConfig.next_eta=0.2", "warm_jax.WARPConfig.next_eta = 0.2: one of etas"),
    ("--gin.warm_jax.PolicyConfig.nope=3", "doesn't have a parameter named 'nope'"),
    ("--gin.warm_jax.Nope.x=3", "No configurable matching 'warm_jax.Nope'"),
    ("--gin_file=experiments/nope.gin", "gin file not found: Unable to open file: "
                                        "experiments/nope.gin"),
    ("--gin.SEED 3", "'--gin.SEED': expected --gin.NAME=VALUE"),
    ("--no_such_flag", "Unknown command line flag 'no_such_flag'"),
    ("stray", "unexpected arguments ['stray']"),
])
def test_a_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, binding, says):
    wd = tmp_path / "run"
    line = refused(cli(*DEMO, f"--gin.WORKDIR='{wd}'", *binding.split(" ")))
    assert says in line, line
    assert not wd.exists()


def test_a_workdir_that_is_a_file_or_cannot_be_made_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    assert "WORKDIR = " in refused(cli(*DEMO, f"--gin.WORKDIR='{f}'"))
    assert f.read_text() == "keep me"
    assert "cannot be created" in refused(cli(*DEMO, f"--gin.WORKDIR='{f}/sub'"))


def test_traceback_flag_shows_the_traceback(tmp_path):
    r = cli(*DEMO, f"--gin.WORKDIR='{tmp_path / 'w'}'", "--gin.RL_STEPS=-5", "--traceback")
    assert r.returncode != 0 and "Traceback" in r.stderr and "UsageError" in r.stderr
    env = dict(subprocess_env(), WARM_JAX_TRACEBACK="1")
    assert "Traceback" in cli(*DEMO, f"--gin.WORKDIR='{tmp_path / 'w'}'", "--gin.SEDE=1",
                              env=env).stderr


def test_help_lists_experiments_and_macros_and_exits_0():
    r = cli("--help")
    assert r.returncode == 0, r.stderr
    for experiment in sorted(os.listdir(os.path.join(REPO, "gin", "experiments"))):
        assert f"experiments/{experiment}" in r.stdout
    assert "The embedded WARM demo on the toy summarisation task." in r.stdout
    assert "RL_STEPS" in r.stdout and "ALPHAS" in r.stdout and "--traceback" in r.stdout


@pytest.mark.parametrize("files", [
    ["experiments/demo.gin"], ["experiments/demo.gin", "experiments/tiny.gin"],
    ["experiments/demo_full.gin"], ["experiments/demo_full.gin", "experiments/tiny_full.gin"],
    ["experiments/calibrate.gin"], ["experiments/warp.gin"], ["experiments/hh_rm.gin"],
    ["experiments/hh_rm.gin", "experiments/tiny_hh.gin"], ["experiments/hh_smollm2.gin"],
    ["experiments/hh_smollm2.gin", "experiments/tiny_hh_smollm2.gin"],
    ["experiments/hh_smollm2_top.gin"]])
def test_every_experiment_passes_the_launch_checks(files, tmp_path):
    """Every shipped experiment reads every macro it sets and builds every stage's config."""
    import gin
    from warm_jax import launch_check
    from warm_jax.main import GIN_DIR
    gin.clear_config()
    try:
        launch_check.parse(files, [f"WORKDIR = '{tmp_path}'"], [GIN_DIR, "."])
        launch_check.check_macros()
        cfgs = launch_check.check_stage_configs()
    finally:
        gin.clear_config()
    assert cfgs and all(type(c).__name__.endswith("Config") for c in cfgs.values())


def test_every_shipped_sweep_unit_passes_the_launch_checks(tmp_path):
    """launch/sweep.py's units, each as its command line binds it (RL_METHODS = () included)."""
    import gin
    from launch.sweep import SWEEPS
    from warm_jax import launch_check
    from warm_jax.main import GIN_DIR
    units = [u for make in SWEEPS.values() for u in make(str(tmp_path))]
    assert units
    for unit in units:
        gin.clear_config()
        try:
            launch_check.parse(list(unit.gin_files), [f"{k} = {v!r}" for k, v in unit.bindings]
                               + [f"WORKDIR = {unit.workdir!r}"], [GIN_DIR, "."])
            launch_check.check_macros()
            assert launch_check.check_stage_configs(), unit.name
        finally:
            gin.clear_config()


def test_fields_added_after_runs_were_recorded_are_recorded_only_when_set():
    """Averaging records what it recorded before its config became a dataclass (so such runs
    resume); eval_split, analysis_members and analyses join the record only when set."""
    from warm_jax import checks
    from warm_jax.average.stage import AverageConfig
    from warm_jax.rl.stage import PolicyConfig
    assert set(checks.recorded(AverageConfig(), drop=("name",))) | {"task", "model_cfg"} == {
        "task", "model_cfg", "m_values", "rank_by", "greedy", "lmc_pairs", "same_run_step",
        "max_eval_pairs", "seed", "seeds", "n_lambdas", "random_orders", "pair_analysis",
        "ood_pairs", "m_curve"}
    assert checks.recorded(AverageConfig(analyses=False, analysis_members=2))["analyses"] is False
    assert "eval_split" not in checks.recorded(PolicyConfig())
    assert checks.recorded(PolicyConfig(eval_split="pilot"))["eval_split"] == "pilot"
