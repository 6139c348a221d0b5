"""Launch a sweep on Cloud TPU / GPU with XManager (the `xm` extra: pip install 'warm_jax[xm]').

    xmanager launch launch/xm_launch.py -- --sweep demo_seeds --accelerator a100 --count 8 \
        --bucket gs://MY_BUCKET/warm_jax

Three layers, so that all but the last run without a cloud project:
  `job_specs`   the job list as plain dicts, one per work unit (no xmanager needed; tested anywhere);
  `xm_objects`  the real xmanager objects for it -- the `xm.python_container` packageable (the repo
                with jax for the accelerator installed on a Docker base image), one executor
                (`xm_local.Vertex`, or `xm_local.Local` for Docker on this machine) with its
                `xm.JobRequirements` per job, and each job's `xm.SequentialArgs` -- without packaging
                or launching anything (tests/test_launch_xm.py, where the `xm` extra is installed);
  `main`        packages the container and adds one `xm.Job` per work unit to an experiment.
A job is one host running `python -m warm_jax.main` with the unit's gin files and bindings, its
WORKDIR moved under the bucket; on several hosts set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (warm_jax.main joins through `jax.distributed.initialize` when they are set).
"""
from __future__ import annotations

import os
from typing import Any

from launch.sweep import SWEEPS, WorkUnit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "warm_jax.main"
# flag value -> xm.ResourceType name (an xm.JobRequirements keyword)
ACCELERATORS = {"v2": "TPU_V2", "v3": "TPU_V3", "a100": "A100", "a100_80gib": "A100_80GIB",
                "v100": "V100", "t4": "T4", "h100": "H100", "h200": "H200"}
# What xmanager's Vertex launcher (0.8) can place: it forms a2-highgpu-* machines for A100 and n1-*
# (which take V100 / T4) otherwise, so H100/H200 would land on an n1 machine, which Vertex AI
# rejects, and A100_80GIB needs a2-ultragpu, which it does not know; its TPUs are v2/v3 TPU *Nodes*
# ('cloud-tpu'), which current jax does not support (TPU VMs only)
VERTEX_ACCELERATORS = ("a100", "v100", "t4")
PLATFORMS = ("vertex", "local")
BASE_IMAGE = "python:3.12-slim"


def job_args(unit: WorkUnit, workdir: str) -> list[str]:
    """The unit's arguments to `warm_jax.main` (gin files, bindings) with WORKDIR set to `workdir`."""
    args = [a for a in unit.argv()[3:] if not a.startswith("--gin.WORKDIR=")]
    return args + [f"--gin.WORKDIR={workdir!r}"]


def job_specs(units: list[WorkUnit], *, accelerator: str = "a100", count: int = 8,
              bucket: str = "gs://YOUR_BUCKET/warm_jax") -> list[dict]:
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator={accelerator!r}: allowed {sorted(ACCELERATORS)}")
    if count < 1:
        raise ValueError(f"count={count}: must be >= 1")
    out = []
    for u in units:
        workdir = f"{bucket.rstrip('/')}/{u.workdir.lstrip('/')}"
        argv = job_args(u, workdir)
        args = {a.split("=", 1)[0].lstrip("-"): a.split("=", 1)[1] for a in argv
                if "=" in a and not a.startswith("--gin_file")}
        out.append({"name": u.name, "module": MODULE, "gin_files": list(u.gin_files),
                    "args": args, "argv": argv, "workdir": workdir,
                    "accelerator": ACCELERATORS[accelerator], "count": count})
    return out


def docker_instructions(accelerator: str, directory: str = os.path.basename(REPO)) -> list[str]:
    """Dockerfile steps after FROM: the repo (the build context's `directory`) installed with the
    jax build for the accelerator (`accelerator`: an xm.ResourceType name)."""
    jax_extra = "tpu" if accelerator.startswith("TPU") else "cuda12"
    return ["ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1",
            "RUN mkdir -p /workdir",
            "WORKDIR /workdir",
            f"COPY {directory}/ /workdir/",
            f"RUN python -m pip install --no-cache-dir 'jax[{jax_extra}]' -e '.[import]'"]


def xm_objects(specs: list[dict], *, platform: str = "vertex", base_image: str = BASE_IMAGE,
               push_image_tag: str | None = None, path: str = REPO) -> tuple[Any, list[tuple]]:
    """(packageable, [(name, executor, args)]) for `job_specs` output; nothing is built or launched.

    `exp.package([packageable])` gives the executable; `xm_jobs` then makes the `xm.Job`s."""
    from xmanager import xm, xm_local
    if platform not in PLATFORMS:
        raise ValueError(f"platform={platform!r}: allowed {PLATFORMS}")
    if not specs:
        raise ValueError("xm_objects: no jobs")
    accelerators = {s["accelerator"] for s in specs}
    if len(accelerators) != 1:  # one image: one jax build
        raise ValueError(f"one accelerator per experiment, got {sorted(accelerators)}")
    [accel] = accelerators
    flag = next(k for k, v in ACCELERATORS.items() if v == accel)
    if platform == "vertex" and flag not in VERTEX_ACCELERATORS:
        raise ValueError(f"accelerator={flag!r}: xmanager's Vertex launcher has no machine type "
                         f"for it; allowed there {VERTEX_ACCELERATORS}")
    if platform == "local" and accel.startswith("TPU"):
        raise ValueError("platform='local' runs Docker on this machine: GPUs only")
    executor_spec = (xm_local.Vertex.Spec(push_image_tag=push_image_tag) if platform == "vertex"
                     else xm_local.Local.Spec())
    packageable = xm.python_container(
        executor_spec=executor_spec, path=path, base_image=base_image,
        docker_instructions=docker_instructions(accel, os.path.basename(os.path.abspath(path))),
        entrypoint=xm.ModuleName(MODULE), use_deep_module=True)
    parts = []
    for s in specs:
        if platform == "vertex":
            executor = xm_local.Vertex(requirements=xm.JobRequirements(**{accel: s["count"]}))
        else:  # the local executor knows only `local_gpu`
            executor = xm_local.Local(requirements=xm.JobRequirements(local_gpu=s["count"]),
                                      experimental_stream_output=False)
        parts.append((s["name"], executor, xm.SequentialArgs.from_collection(list(s["argv"]))))
    return packageable, parts


def xm_jobs(executable: Any, parts: list[tuple]) -> list:
    """One `xm.Job` per part around a packaged executable (still nothing launched)."""
    from xmanager import xm
    return [xm.Job(executable=executable, executor=executor, args=args, name="warm_jax")
            for _, executor, args in parts]


def stage_source(dest: str, repo: str = REPO) -> str:
    """Copy the repo's git-tracked files to `dest`/warm_jax (xmanager copies its whole `path` into
    the Docker context: this leaves .venv, runs/ and the like out). Returns that directory."""
    import shutil
    import subprocess
    files = subprocess.run(["git", "ls-files", "-z"], cwd=repo, check=True, capture_output=True,
                           text=True).stdout.split("\0")
    out = os.path.join(dest, "warm_jax")
    for f in filter(None, files):
        if os.path.isfile(os.path.join(repo, f)):
            os.makedirs(os.path.dirname(os.path.join(out, f)), exist_ok=True)
            shutil.copy2(os.path.join(repo, f), os.path.join(out, f))
    return out


def main(argv):  # pragma: no cover - needs xmanager, Docker and a cloud project
    import tempfile
    from absl import flags
    from xmanager import xm_local
    FLAGS = flags.FLAGS
    specs = job_specs(SWEEPS[FLAGS.sweep]("runs/sweeps"), accelerator=FLAGS.accelerator,
                      count=FLAGS.count, bucket=FLAGS.bucket)
    with tempfile.TemporaryDirectory() as tmp:
        packageable, parts = xm_objects(specs, platform=FLAGS.platform,
                                        base_image=FLAGS.base_image, path=stage_source(tmp))
        with xm_local.create_experiment(experiment_title=f"warm_jax/{FLAGS.sweep}") as exp:
            [executable] = exp.package([packageable])
            for job in xm_jobs(executable, parts):
                exp.add(job)  # one work unit per sweep point


if __name__ == "__main__":  # pragma: no cover
    from absl import app, flags
    flags.DEFINE_string("sweep", "demo_seeds", "sweep name in launch/sweep.py")
    flags.DEFINE_string("accelerator", "a100", f"one of {sorted(ACCELERATORS)}")
    flags.DEFINE_integer("count", 8, "accelerators per job")
    flags.DEFINE_string("bucket", "gs://YOUR_BUCKET/warm_jax", "where work directories live")
    flags.DEFINE_enum("platform", "vertex", list(PLATFORMS), "Vertex AI, or Docker on this host")
    flags.DEFINE_string("base_image", BASE_IMAGE, "Docker base image (Python 3.11+)")
    app.run(main)
