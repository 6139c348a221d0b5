import os

# Tests check logic on tiny shapes, where XLA:CPU's optimising backend costs more than the programs
# run: two thirds of a tiny demo's wall time is compilation, a third less of it at optimisation
# level 0 (numerics differ from -O2 only in float rounding, and every test compares runs made under
# the same flags). WARM_JAX_TEST_XLA_OPT=1 keeps XLA's defaults.
FAST_XLA = ("" if os.environ.get("WARM_JAX_TEST_XLA_OPT") == "1" else
            "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")

# 8 fake CPU devices so every test run exercises sharded code; set before jax is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=8").strip()
if FAST_XLA and "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + FAST_XLA

import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

# One persistent compilation cache per test session, empty at its start (what a fresh clone sees),
# shared by this process and every `python -m warm_jax.main` subprocess: a program compiled once
# (by a resumed run, or by another test building the same step) is not compiled again.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="warm_jax_jit_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(**extra) -> dict:
    """The environment of a `python -m warm_jax.main` subprocess: one device, the session cache."""
    return dict(os.environ, XLA_FLAGS=FAST_XLA, PYTHONPATH=REPO, **extra)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marks into group node ids
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs two workers), the tests that share a session fixture
    built by a whole pipeline run share a worker, so that it is built once."""
    for item in items:
        for fixture in ("tiny_demo", "toy_init"):
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(fixture))
                break


def demo_cmd(workdir, *extra, experiment="demo", tiny="tiny") -> list[str]:
    return [sys.executable, "-m", "warm_jax.main", f"--gin_file=experiments/{experiment}.gin",
            f"--gin_file=experiments/{tiny}.gin", f"--gin.WORKDIR='{workdir}'", *extra]


def run_demo(workdir, *extra, env=None, **kw):
    return subprocess.run(demo_cmd(workdir, *extra, **kw), cwd=REPO, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """One uninterrupted run of the demo's gin files with the tiny override (shared by tests)."""
    wd = str(tmp_path_factory.mktemp("demo") / "run")
    r = run_demo(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    return wd


@pytest.fixture(scope="session")
def eight_devices():
    devs = jax.devices()
    assert len(devs) == 8, f"tests expect 8 fake CPU devices, got {len(devs)} (XLA_FLAGS)"
    return devs


# a small shared initialisation (pretrain -> SFT trajectory) for the RM / averaging / RL tests
TOY_TEST_TASK = dict(n_pretrain=3000, n_sft=1000, n_rm_train=1500, n_rm_validation=500,
                     n_rm_test=500, n_rl_prompts=256, n_eval_prompts=64)


@pytest.fixture(scope="session")
def toy_init(tmp_path_factory):
    """(workdir, task, model_cfg) with pretrain and SFT (checkpoints 100, 150, 200) done."""
    from warm_jax import sft
    from warm_jax.data.toy import ToyTask, ToyTaskConfig
    from warm_jax.models import preset
    from warm_jax.train import OptimConfig
    wd = str(tmp_path_factory.mktemp("toy_init"))
    task = ToyTask(ToyTaskConfig(**TOY_TEST_TASK))
    cfg = preset("toy", d_model=32, d_ff=64)
    sft.pretrain(workdir=wd, task=task, model_cfg=cfg,
                 cfg=sft.PretrainConfig(num_steps=300, batch_size=32,
                                        optim=OptimConfig(learning_rate=3e-3, warmup_steps=20),
                                        ckpt_every=300))
    sft.sft(workdir=wd, task=task, model_cfg=cfg,
            cfg=sft.SFTConfig(num_steps=200, batch_size=32, trajectory=(100, 150, 200),
                              optim=OptimConfig(learning_rate=3e-3), eval_samples=32))
    return wd, task, cfg
