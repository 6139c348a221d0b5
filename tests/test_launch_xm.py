"""launch/xm_launch.py against the real `xmanager` package: the experiment's objects for a sweep
(packageable, executors with their requirements, job args, xm.Job) are built, nothing is packaged
or launched, no cloud credentials are read. Runs where the `xm` extra is installed (make test-launch).
"""
import os

import pytest

pytest.importorskip("xmanager", reason="needs the `xm` extra (pip install 'warm_jax[xm]'; "
                                       "`make test-launch` does it in its own venv)")
from xmanager import xm, xm_local  # noqa: E402
from xmanager.xm import utils as xm_utils  # noqa: E402

from conftest import REPO  # noqa: E402
from launch.sweep import SWEEPS, product_sweep  # noqa: E402
from launch.xm_launch import (ACCELERATORS, docker_instructions, job_specs, xm_jobs,  # noqa: E402
                              xm_objects)

BUCKET = "gs://bucket/warm_jax"


def _units():
    return product_sweep("s", ["experiments/demo.gin"], {"SEED": [0, 1], "ALPHAS": [(0.01,), (0.1,)]},
                         root="runs/sweeps")


def test_vertex_experiment_objects_for_a_sweep():
    units = _units()
    specs = job_specs(units, accelerator="a100", count=8, bucket=BUCKET + "/")
    packageable, parts = xm_objects(specs, push_image_tag="gcr.io/p/warm_jax:t")
    # the executable spec: the repo as a Python container entering warm_jax.main
    assert isinstance(packageable, xm.Packageable)
    spec = packageable.executable_spec
    assert isinstance(spec, xm.PythonContainer)
    assert spec.entrypoint == xm.ModuleName("warm_jax.main") and spec.use_deep_module
    assert os.path.samefile(spec.path, REPO)
    assert spec.docker_instructions == docker_instructions("A100", os.path.basename(REPO))
    assert any("'jax[cuda12]'" in line for line in spec.docker_instructions)
    assert isinstance(packageable.executor_spec, xm_local.Vertex.Spec)
    assert packageable.executor_spec.push_image_tag == "gcr.io/p/warm_jax:t"
    # one job per work unit: the requirements carry the accelerator, the args the gin bindings
    assert [p[0] for p in parts] == [u.name for u in units]
    for u, (name, executor, args) in zip(units, parts):
        assert isinstance(executor, xm_local.Vertex)
        req = executor.requirements
        assert req.accelerator == xm.ResourceType.A100 and req.topology.chip_count == 8
        assert req.task_requirements[xm.ResourceType.A100] == 8
        argv = args.to_list(xm_utils.ARGV_ESCAPER)  # how the Vertex launcher renders them
        workdir = f"{BUCKET}/{u.workdir}"
        assert argv == [*u.argv()[3:-1], f"--gin.WORKDIR={workdir!r}"]
        assert argv[0] == "--gin_file=experiments/demo.gin"
        assert {f"--gin.{k}={v!r}" for k, v in u.bindings} <= set(argv)
    assert parts[1][2].to_list(xm_utils.ARGV_ESCAPER)[1:3] == ["--gin.SEED=0",
                                                              "--gin.ALPHAS=(0.1,)"]
    # around a packaged executable (what exp.package returns for Vertex): real xm.Jobs
    executable = xm_local.executables.GoogleContainerRegistryImage(
        name="warm_jax", image_path="gcr.io/p/warm_jax:t")
    jobs = xm_jobs(executable, parts)
    assert len(jobs) == 4 and all(isinstance(j, xm.Job) for j in jobs)
    merged = xm.merge_args(executable.args, jobs[3].args).to_list(xm_utils.ARGV_ESCAPER)
    assert merged[-1] == f"--gin.WORKDIR={BUCKET + '/' + units[3].workdir!r}"
    # the machine Vertex AI would be asked for (the launcher's own mapping, no client created)
    from xmanager.cloud import vertex
    machine = vertex.get_machine_spec(jobs[0])
    assert machine["machine_type"] == "a2-highgpu-8g" and machine["accelerator_count"] == 8
    assert machine["accelerator_type"].name == "NVIDIA_TESLA_A100"


def test_every_sweep_builds_and_bad_requests_are_refused():
    for name, make in SWEEPS.items():
        specs = job_specs(make("runs/sweeps"), accelerator="v100", count=1, bucket=BUCKET)
        _, parts = xm_objects(specs)
        assert len(parts) == len(specs) >= 3, name
        assert all(e.requirements.task_requirements[xm.ResourceType.V100] == 1 for _, e, _ in parts)
    assert set(ACCELERATORS.values()) <= set(xm.ResourceType.__members__)
    units = _units()
    for accel in ("h100", "v3"):  # no Vertex machine type in xmanager / TPU Nodes: refused early
        with pytest.raises(ValueError, match=f"accelerator={accel!r}"):
            xm_objects(job_specs(units, accelerator=accel, bucket=BUCKET))
    with pytest.raises(ValueError, match="platform='gke'"):
        xm_objects(job_specs(units, bucket=BUCKET), platform="gke")
    with pytest.raises(ValueError, match="GPUs only"):
        xm_objects(job_specs(units, accelerator="v3", bucket=BUCKET), platform="local")
    with pytest.raises(ValueError, match="count=0"):
        job_specs(units, count=0)


def test_local_docker_executor():
    specs = job_specs(_units()[:1], accelerator="h100", count=1, bucket="/tmp/warm_runs")
    packageable, [(_, executor, args)] = xm_objects(specs, platform="local")
    assert isinstance(packageable.executor_spec, xm_local.Local.Spec)
    assert isinstance(executor, xm_local.Local)
    assert executor.requirements.task_requirements[xm.ResourceType.LOCAL_GPU] == 1
    assert args.to_list(xm_utils.ARGV_ESCAPER)[-1] == (
        f"--gin.WORKDIR='/tmp/warm_runs/{_units()[0].workdir}'")
