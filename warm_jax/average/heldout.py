"""Stage: what a user takes away from a population on real preferences. On the held-out split,
each member's accuracy, the weight average's (WA), the ensembles' (ENS, WCO, UWO), and the paired
intervals of WA − ENS and WA − best member (pairs needed to decide them, while inconclusive), the
shared linear probe's accuracy and how far each member moved from it (WA and ENS part only as
members move apart); then the WA exported as a Hugging Face `*ForSequenceClassification`
directory, read back and scored on tokens against the scores it was evaluated with.

Writes `<workdir>/rm/<name>/seed_<s>/heldout.json` and `.../export/<method>_hf/`.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax import checks
from warm_jax.average.evaluate import compare, interval, verdict_line
from warm_jax.average.hf_members import relative_distance
from warm_jax.checkpoint import flatten, restore_params
from warm_jax.fileio import write_json
from warm_jax.layout import RunLayout, chain
from warm_jax.models import ModelConfig, RewardModel
from warm_jax.progress import note_work
from warm_jax.rm.loss import make_pair_scorer, task_reward_model
from warm_jax.rm.trunk import full_params


@dataclasses.dataclass(frozen=True)
class HeldoutConfig:
    """`method`: the average to report and export (`averages/<method>`). `check_pairs`: how many
    held-out pairs the exported directory is scored on, from tokens, to check the export."""
    name: str = "rm"
    seed: int = 0
    method: str = "warm_M4"
    split: str = "test"
    uwo_lambda: float = 0.5
    check_pairs: int = 8
    eval_batch_size: int = checks.run_only(64)

    def __post_init__(self):
        checks.integers(self, 0, "seed")
        checks.integers(self, 1, "check_pairs", "eval_batch_size")
        checks.at_least(self, 0.0, "uwo_lambda")


def heldout_report(*, workdir: str, task, model_cfg: ModelConfig, cfg: HeldoutConfig,
                   token_task=None) -> str:
    """`token_task`: the pairs as tokens, where `task` serves cached trunk states (the export is
    then checked on them); default `task`."""
    from warm_jax.models.hf import config_of, export, load_safetensors
    layout = RunLayout(workdir)
    name = chain(cfg.name, cfg.seed)
    rm_dir = layout.rm(name)
    out_path = os.path.join(rm_dir, "heldout.json")
    export_dir = os.path.join(rm_dir, "export", f"{cfg.method}_hf")
    config = dict(task=task, model_cfg=model_cfg, **checks.recorded(cfg))
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
        result = dict(compare([scorer(p, split) for p in members], r_wa, cfg.uwo_lambda),
                      split=cfg.split, pairs=int(len(split["chosen"])), members=len(members),
                      method=cfg.method, input_layer=int(getattr(task, "input_layer", 0)))
        if os.path.isdir(layout.linear_probe(name)):   # the shared init: how far members moved
            probe = restore_params(layout.linear_probe(name))[0]
            rc, rr = scorer(probe, split)
            result["probe_accuracy"] = float((rc > rr).mean())
            result["probe_accuracy_ci"] = interval((rc > rr).astype(float))["ci"]
            result["distance_from_probe"] = [relative_distance(flatten(m), flatten(probe))
                                             for m in members]

        base = restore_params(layout.checkpoints(layout.sft))[0]
        whole = full_params(base, wa) if result["input_layer"] else wa
        size = lambda t: int(sum(np.size(x) for x in jax.tree.leaves(t)))  # noqa: E731
        result.update(trained_parameters=size(wa), parameters=size(whole))
        summary = getattr(token_task or task, "summary", None)
        if summary is not None:   # what the length limits cut (a preference file's task)
            result["truncation"] = {"pairs": summary.pairs,
                                    "prompts": summary.truncated_prompts,
                                    "responses": summary.truncated_responses}
        if os.path.isdir(export_dir) and os.listdir(export_dir):   # a kill after the export
            import shutil
            shutil.rmtree(export_dir)
        pad = getattr(token_task or task, "pad_id", None)
        export(jax.device_get(whole), model_cfg, export_dir,
               config=config_of(model_cfg, reward_model=True, pad_token_id=pad),
               files_from=layout.root if os.path.exists(layout.tokenizer) else None)
        back, _ = load_safetensors(export_dir)
        pairs = (token_task or task).preference_split(cfg.split)
        n = min(cfg.check_pairs, len(pairs["chosen"]))
        tok_scorer = make_pair_scorer(RewardModel(model_cfg), cfg.eval_batch_size)
        rc, rr = tok_scorer(jax.tree.map(jnp.asarray, back),
                            {k: v[:n] for k, v in pairs.items() if k != "flipped"})
        result["export"] = {"dir": os.path.relpath(export_dir, layout.root), "pairs_checked": n,
                            "max_abs_diff": float(max(np.abs(rc - r_wa[0][:n]).max(),
                                                      np.abs(rr - r_wa[1][:n]).max()))}
        write_json(out_path, result)
        for line in summary_lines(result):
            print(line, flush=True)
    return out_path


def summary_lines(result: dict) -> list[str]:
    lines = [f"{result['pairs']} held-out pairs ({result['split']}); accuracy: " + ", ".join(
        f"{k} {v:.3f}" for k, v in result["accuracy"].items())]
    lines.append(verdict_line("WA - ENS", result["wa_minus_ens"]))
    lines.append(verdict_line(f"WA - best ({result['wa_minus_best_member']['member']})",
                              result["wa_minus_best_member"]))
    if "probe_accuracy" in result:
        lines.append(f"the shared linear probe: accuracy {result['probe_accuracy']:.3f}; members "
                     "moved from it by relative distance " + ", ".join(
                         f"{d:.2g}" for d in result["distance_from_probe"]))
    e = result.get("export")
    if e:
        lines.append(f"exported {e['dir']}: scored from tokens on {e['pairs_checked']} pairs, "
                     f"max |difference| {e['max_abs_diff']:.2e}")
    return lines
