"""Stage: what a user takes away from a population on real preferences. On the held-out split:
each member's accuracy, the weight average's (WA), the ensembles' (ENS, WCO, UWO); the paired
intervals of WA − ENS and WA − best member (the best on the validation pairs), with the pairs
needed to decide them while inconclusive; the shared linear probe's accuracy and how far each
member moved from it (WA and ENS part only as members move apart). Then the WA is exported as a
Hugging Face `*ForSequenceClassification` directory, read back and scored on tokens against the
scores it was evaluated with.

Writes `<workdir>/rm/<name>/seed_<s>/heldout.json` and `.../export/<method>_hf/`.
"""
from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax import checks
from warm_jax.average.evaluate import compare, interval, verdict_line
from warm_jax.average.hf_members import relative_distance
from warm_jax.checkpoint import flatten, restore_params
from warm_jax.data.real import PreferenceFileTask
from warm_jax.data.task import SPLITS
from warm_jax.fileio import write_json
from warm_jax.layout import RunLayout, chain
from warm_jax.models import ModelConfig, RewardModel
from warm_jax.models.hf import config_of, export, load_safetensors
from warm_jax.progress import note_work
from warm_jax.rm.loss import make_pair_scorer, task_reward_model
from warm_jax.rm.trunk import full_params


EXPORT_TOLERANCE = 1e-3   # relative: float32 rounding of two computation orders is ~1e-6


@dataclasses.dataclass(frozen=True)
class HeldoutConfig:
    """`method`: the average to report and export (`averages/<method>`). `check_pairs`: how many
    held-out pairs the exported directory is scored on, from tokens, to check the export."""
    name: str = "rm"
    seed: int = 0
    method: str = "warm_M4"
    split: str = "test"
    select_on: str = "validation"   # where the best member is chosen
    uwo_lambda: float = 0.5
    check_pairs: int = 8
    eval_batch_size: int = checks.run_only(64)

    def __post_init__(self):
        checks.integers(self, 0, "seed")
        checks.integers(self, 1, "check_pairs", "eval_batch_size")
        checks.at_least(self, 0.0, "uwo_lambda")
        # known at launch (the launch checks build this config): refused before any stage runs;
        # whether the task has the split is checked when the stage starts
        checks.one_of(self, "split", SPLITS + ("ood",))
        checks.one_of(self, "select_on", SPLITS + ("ood",))


def heldout_report(*, workdir: str, task, model_cfg: ModelConfig, cfg: HeldoutConfig,
                   token_task=None) -> str:
    """`token_task`: the pairs as tokens, where `task` serves cached trunk states (the export is
    then checked on them); default `task`."""
    layout = RunLayout(workdir)
    name = chain(cfg.name, cfg.seed)
    rm_dir = layout.rm(name)
    out_path, export_dir = layout.heldout(name), layout.export(name, cfg.method)
    if cfg.split not in task.splits or cfg.split == cfg.select_on:
        checks.fail(cfg, "split", f"one of {tuple(task.splits)}, not select_on")
    if cfg.select_on not in task.splits:
        checks.fail(cfg, "select_on", f"one of {tuple(task.splits)}")
    if not os.path.isdir(layout.average(name, cfg.method)):
        have = sorted(os.listdir(os.path.dirname(layout.average(name, cfg.method)))) \
            if os.path.isdir(os.path.dirname(layout.average(name, cfg.method))) else []
        checks.fail(cfg, "method", f"an average of {rm_dir} (have {have})")
    if task.input_layer and token_task is None:
        raise ValueError("heldout_report.token_task is unset: the task serves trunk states, and "
                         "the export is checked from the pairs' tokens")
    config = dict(task=task, token_task=token_task, model_cfg=model_cfg,
                  **checks.recorded(cfg))
    with layout.stage("heldout", os.path.join(rm_dir, "heldout_stage"), config,
                      outputs=[out_path, export_dir]):
        if os.path.exists(out_path):   # written last
            return out_path
        note_work()
        split = task.preference_split(cfg.split)
        scorer = make_pair_scorer(task_reward_model(task, model_cfg), cfg.eval_batch_size)
        members = [restore_params(d)[0] for d in layout.member_dirs(name)]
        wa = restore_params(layout.average(name, cfg.method))[0]
        r_wa = scorer(wa, split)
        # the best member is chosen on other pairs than those it is compared on
        select = task.preference_split(cfg.select_on)
        best = int(np.argmax([np.mean(np.greater(*scorer(p, select))) for p in members]))
        result = dict(compare([scorer(p, split) for p in members], r_wa, cfg.uwo_lambda, best),
                      split=cfg.split, best_chosen_on=cfg.select_on,
                      pairs=int(len(split["chosen"])), members=len(members), method=cfg.method,
                      uwo_lambda=cfg.uwo_lambda, input_layer=int(task.input_layer))
        if os.path.isdir(layout.linear_probe(name)):   # the shared init: how far members moved
            probe = restore_params(layout.linear_probe(name))[0]
            rc, rr = scorer(probe, split)
            result["probe_accuracy"] = float((rc > rr).mean())
            result["probe_accuracy_ci"] = interval((rc > rr).astype(float))["ci"]
            result["distance_from_probe"] = [relative_distance(flatten(m), flatten(probe))
                                             for m in members]

        tokens = task if token_task is None else token_task
        base = restore_params(layout.checkpoints(layout.sft))[0]
        whole = full_params(base, wa) if result["input_layer"] else wa
        size = lambda t: int(sum(np.size(x) for x in jax.tree.leaves(t)))  # noqa: E731
        result.update(trained_parameters=size(wa), parameters=size(whole))
        if isinstance(tokens, PreferenceFileTask):   # what its length limits cut
            summary = tokens.load_summary()
            result["truncation"] = {"pairs": summary.pairs,
                                    "prompts": summary.truncated_prompts,
                                    "responses": summary.truncated_responses}
        if os.path.isdir(export_dir) and os.listdir(export_dir):   # a kill after the export
            shutil.rmtree(export_dir)
        export(jax.device_get(whole), model_cfg, export_dir,
               config=config_of(model_cfg, reward_model=True, pad_token_id=tokens.pad_id),
               files_from=layout.root if os.path.exists(layout.tokenizer) else None)
        back, _ = load_safetensors(export_dir)
        pairs = tokens.preference_split(cfg.split)
        n = min(cfg.check_pairs, len(pairs["chosen"]))
        tok_scorer = make_pair_scorer(RewardModel(model_cfg), cfg.eval_batch_size)
        rc, rr = tok_scorer(jax.tree.map(jnp.asarray, back),
                            {k: v[:n] for k, v in pairs.items() if k != "flipped"})
        diff = float(max(np.abs(rc - r_wa[0][:n]).max(), np.abs(rr - r_wa[1][:n]).max()))
        if not diff <= EXPORT_TOLERANCE * max(1.0, float(np.abs(r_wa[0][:n]).max())):
            raise FloatingPointError(f"{export_dir} scores differ from the evaluated WA's by "
                                     f"{diff:.3g} on {n} pairs: the export is not that model")
        result["export"] = {"dir": os.path.relpath(export_dir, layout.root), "pairs_checked": n,
                            "max_abs_diff": diff}
        write_json(out_path, result)
        for line in summary_lines(result):
            print(line, flush=True)
    return out_path


def summary_lines(result: dict) -> list[str]:
    lines = [f"{result['pairs']} held-out pairs ({result['split']}); accuracy: " + ", ".join(
        f"{k} {v:.3f}" for k, v in result["accuracy"].items())]
    lines.append(verdict_line("WA - ENS", result["wa_minus_ens"]))
    lines.append(verdict_line(f"WA - best ({result['wa_minus_best_member']['member']}, best "
                              f"on {result['best_chosen_on']})", result["wa_minus_best_member"]))
    if result.get("wa_ens_margin_correlation") is not None:
        lines.append("WA's and ENS's reward margins correlate at "
                     f"{result['wa_ens_margin_correlation']:.6f} over the pairs")
    if "probe_accuracy" in result:
        lines.append(f"the shared linear probe: accuracy {result['probe_accuracy']:.3f}; members "
                     "moved from it by relative distance " + ", ".join(
                         f"{d:.2g}" for d in result["distance_from_probe"]))
    e = result.get("export")
    if e:
        lines.append(f"exported {e['dir']}: scored from tokens on {e['pairs_checked']} pairs, "
                     f"max |difference| {e['max_abs_diff']:.2e}")
    return lines
