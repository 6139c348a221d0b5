"""The run directory: every path a stage reads or writes (stages meet only through these files).

One `RunLayout(workdir)` names every output:
  pretrain/  sft/                       checkpoints + train.jsonl (sft also eval.jsonl)
  ood/pairs.npz  ood/summary.jsonl      the sampled OOD preference split (warm_jax.ood)
  rm/<name>/train/population/           the S x M members of every chain seed, one program
  rm/<name>/seed_<s>/linear_probe/  train/member_<i>/  members/member_<i>/  averages/<method>/
  rm/<name>/seed_<s>/eval.jsonl  analysis.jsonl          (chain seed s: `chain(name, s)`)
  rm/<name>/seed_<s>/heldout.json  export/<method>_hf/  the held-out report, the exported average
  trunk/layer_<k>/<split>/part_<j>.npz  cached states entering block k (warm_jax.rm.trunk)
  rl/<rm>/bon.jsonl (rows tagged by seed)
  rl/<rm>/<method>/{checkpoints, train.jsonl, eval.jsonl, final.jsonl, eval_samples.npz}
  warp/<rm>/<method>/{iter_<i>/..., final.jsonl}
  calibration/<round>/
  config.gin  operative_config.gin  run_info.json  timings.json  report.md  claims.json  figures/

How the files are written: warm_jax.fileio; locks and recorded stage configurations: warm_jax.guards.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterable, Mapping

from warm_jax.fileio import read_json, write_json
from warm_jax.guards import check_stage_config, output_lock

log = logging.getLogger(__name__)


def chain(name: str, seed: int) -> str:
    """The reward-model name of chain seed `seed` of `name` (a subdirectory of rm/<name>). A run's
    seeds are an axis of its programs: chain seed s has its own training-label draw, RM population,
    averages, best-of-N samples and RL runs; pretraining and SFT are shared by every chain seed."""
    return f"{name}/seed_{int(seed)}"


# --- the layout ------------------------------------------------------------------------------------

class RunLayout:
    """Every path under one work directory."""

    def __init__(self, workdir: str):
        self.root = os.path.abspath(workdir)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    # run-level files
    config_gin = property(lambda self: self.path("config.gin"))
    operative_gin = property(lambda self: self.path("operative_config.gin"))
    run_info = property(lambda self: self.path("run_info.json"))
    timings = property(lambda self: self.path("timings.json"))
    report = property(lambda self: self.path("report.md"))
    claims = property(lambda self: self.path("claims.json"))
    figures = property(lambda self: self.path("figures"))
    tokenizer = property(lambda self: self.path("tokenizer.json"))

    # shared initialisation
    pretrain = property(lambda self: self.path("pretrain"))
    sft = property(lambda self: self.path("sft"))
    imported = property(lambda self: self.path("import"))
    # the sampled OOD preference split (warm_jax.ood)
    ood = property(lambda self: self.path("ood"))
    ood_pairs = property(lambda self: self.path("ood", "pairs.npz"))
    ood_summary = property(lambda self: self.path("ood", "summary.jsonl"))

    @staticmethod
    def checkpoints(stage_dir: str) -> str:
        return os.path.join(stage_dir, "checkpoints")

    # reward models
    def rm(self, name: str) -> str:
        return self.path("rm", name)

    def linear_probe(self, name: str) -> str:
        return os.path.join(self.rm(name), "linear_probe")

    def rm_train(self, name: str, run: str) -> str:
        """`run`: 'population' or 'member_<i>'."""
        return os.path.join(self.rm(name), "train", run)

    def member(self, name: str, i: int) -> str:
        return os.path.join(self.rm(name), "members", f"member_{i}")

    def average(self, name: str, method: str) -> str:
        return os.path.join(self.rm(name), "averages", method)

    def trunk(self, first_layer: int, split: str | None = None) -> str:
        """The cached states entering block `first_layer` (warm_jax.rm.trunk), per split."""
        return self.path("trunk", f"layer_{first_layer}", *((split,) if split else ()))

    def heldout(self, name: str) -> str:
        """The held-out report of `name`'s population (warm_jax.average.heldout)."""
        return os.path.join(self.rm(name), "heldout.json")

    def export(self, name: str, method: str) -> str:
        """`method`'s average as a Hugging Face directory."""
        return os.path.join(self.rm(name), "export", f"{method}_hf")

    def member_done(self, name: str, i: int) -> bool:
        from warm_jax.checkpoint import Checkpointer
        d = self.member(name, i)
        return os.path.isdir(d) and Checkpointer(d, read_only=True).latest_step() is not None

    def member_dirs(self, name: str) -> list[str]:
        """The exported members 0, 1, … (stops at the first missing one)."""
        out, i = [], 0
        while self.member_done(name, i):
            out.append(self.member(name, i))
            i += 1
        if not out:
            raise FileNotFoundError(f"no trained members under {self.rm(name)}/members")
        return out

    # policies
    def rl(self, rm_name: str) -> str:
        return self.path("rl", rm_name)

    def rl_method(self, rm_name: str, method: str) -> str:
        return os.path.join(self.rl(rm_name), method)

    def calibration(self, name: str) -> str:
        """One round of the RL-regime calibration (warm_jax.rl.calibrate)."""
        return self.path("calibration", name)

    def bon(self, rm_name: str) -> str:
        return os.path.join(self.rl(rm_name), "bon.jsonl")

    def warp(self, rm_name: str) -> str:
        """WARP against `rm_name`: one directory per method, one per iteration (rl/warp_stage)."""
        return self.path("warp", rm_name)

    # the files inside a stage's, a chain's or a method's directory (final.jsonl, written last,
    # marks a method done)
    train_rows = staticmethod(lambda d: os.path.join(d, "train.jsonl"))
    eval_rows = staticmethod(lambda d: os.path.join(d, "eval.jsonl"))
    final_rows = staticmethod(lambda d: os.path.join(d, "final.jsonl"))
    analysis_rows = staticmethod(lambda d: os.path.join(d, "analysis.jsonl"))
    eval_samples = staticmethod(lambda d: os.path.join(d, "eval_samples.npz"))

    # locks
    def lock(self, output: str, *, wait: bool = False):
        """Lock one output (a path relative to the work directory, or absolute inside it)."""
        rel = os.path.relpath(os.path.join(self.root, output), self.root)
        return output_lock(self.path(".locks", rel.replace(os.sep, "__") + ".lock"),
                           f"{self.root}/{rel}", wait=wait)

    def locks(self, outputs: Iterable[str]):
        stack = contextlib.ExitStack()
        try:
            for o in sorted(set(outputs)):
                stack.enter_context(self.lock(o))
        except BaseException:
            stack.close()
            raise
        return stack

    @contextlib.contextmanager
    def stage(self, stage: str, stage_dir: str, config: Mapping[str, Any], *,
              outputs: Iterable[str] | None = None):
        """Enter a stage: lock its outputs (default: its directory), then check or record the
        configuration that feeds it."""
        with self.locks(outputs if outputs is not None else [stage_dir]):
            check_stage_config(stage_dir, stage, config)
            yield

    def update_timings(self, name: str, seconds: float) -> dict:
        """Read-modify-write of timings.json under a short lock (side-by-side launches share it)."""
        with self.lock("timings.json", wait=True):
            try:
                timings = read_json(self.timings, {})
            except ValueError as e:
                log.warning("%s; starting the timings afresh", e)
                timings = {}
            timings[name] = round(seconds, 2)
            write_json(self.timings, timings)
        return timings
