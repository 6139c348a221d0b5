"""Launch a sweep on Cloud TPU / GPU with XManager (the `xm` extra: pip install 'warm_jax[xm]').

    xmanager launch launch/xm_launch.py -- --sweep demo_seeds --accelerator v3 --count 8

`job_specs` builds the job list (one per work unit) without xmanager, so it is tested anywhere.
On a multi-host slice each host runs the same command; `warm_jax.main` joins the slice through
`jax.distributed.initialize` from the coordinator variables the platform sets.
"""
from __future__ import annotations

from launch.sweep import SWEEPS, WorkUnit

# XManager resource names (xm.JobRequirements keywords) for Vertex AI
ACCELERATORS = {"v2": "TPU_V2", "v3": "TPU_V3", "a100": "A100", "v100": "V100", "t4": "T4",
                "h100": "H100"}


def job_specs(units: list[WorkUnit], *, accelerator: str = "v3", count: int = 8,
              bucket: str = "gs://YOUR_BUCKET/warm_jax") -> list[dict]:
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator={accelerator!r}: allowed {sorted(ACCELERATORS)}")
    out = []
    for u in units:
        args = {a.split("=", 1)[0].lstrip("-"): a.split("=", 1)[1] for a in u.argv()[3:]
                if "=" in a and not a.startswith("--gin_file")}
        out.append({"name": u.name, "module": "warm_jax.main",
                    "gin_files": list(u.gin_files), "args": args,
                    "workdir": f"{bucket}/{u.workdir}", "accelerator": ACCELERATORS[accelerator],
                    "count": count})
    return out


def main(argv):  # pragma: no cover - needs xmanager and a cloud project
    from absl import flags
    from xmanager import xm, xm_local
    FLAGS = flags.FLAGS
    specs = job_specs(SWEEPS[FLAGS.sweep]("runs/sweeps"), accelerator=FLAGS.accelerator,
                      count=FLAGS.count, bucket=FLAGS.bucket)
    with xm_local.create_experiment(experiment_title=f"warm_jax/{FLAGS.sweep}") as exp:
        [executable] = exp.package([xm.python_container(
            executor_spec=xm_local.Vertex.Spec(), path=".", entrypoint=xm.ModuleName("warm_jax.main"))])
        for s in specs:
            args = [f"--gin_file={f}" for f in s["gin_files"]]
            args += [f"--{k}={v}" for k, v in s["args"].items()]
            args += [f"--gin.WORKDIR={s['workdir']!r}"]
            exp.add(xm.Job(executable=executable, args=args, executor=xm_local.Vertex(
                xm.JobRequirements(**{s["accelerator"]: s["count"]}))))


if __name__ == "__main__":  # pragma: no cover
    from absl import app, flags
    flags.DEFINE_string("sweep", "demo_seeds", "sweep name in launch/sweep.py")
    flags.DEFINE_string("accelerator", "v3", f"one of {sorted(ACCELERATORS)}")
    flags.DEFINE_integer("count", 8, "accelerators per job")
    flags.DEFINE_string("bucket", "gs://YOUR_BUCKET/warm_jax", "where work directories live")
    app.run(main)
