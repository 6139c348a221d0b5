"""Stage: a declared calibration of the RL regime, from the single-RM baseline alone.

WARM can only be shown to reduce reward hacking where the single RM hacks (docs/evidence.md,
"Choosing a regime without choosing the answer"). This stage picks that regime so that it cannot
lean towards WARM's answer:

* the candidates, (learning rate, steps, α) in order of increasing optimisation pressure, and the
  pass rule are declared in gin (`experiments/calibrate.gin`) and committed before it runs;
* it trains RL against the single RM (`single`: the best member on validation) only: no WARM,
  ENS, WCO or UWO is ever built on the pilot seeds;
* on pilot chain seeds disjoint from every evaluation seed (refused otherwise), each with its own
  label draw and RM population, evaluated on the task's `pilot` prompts, none of which is an
  evaluation prompt (checked);
* candidates are judged in order and the first that passes is the regime; later ones are not run.

A run passes (`judge_run`) when, on the held-out pilot prompts, the control reward rises at least
`min_rise` above step 0 and then falls at least `min_fall` below that peak by the candidate's last
step, at a final KL to the SFT policy of at most `max_final_kl`; the peak step is chosen on the
first half of the prompts and every number is measured on the second half. A candidate passes when
at least `min_seeds` of its pilot seeds do. Candidates sharing a learning rate run as one program
(their α × seeds vmapped) to the largest of their step counts; each is judged on its own prefix
(the optimiser's schedule does not depend on the run's length).

Writes `<workdir>/calibration/<name>/` (one directory per declared round): `lr_<lr>/` (the RL
runs, as the RL stage writes them) and `record.json` (every candidate's per-seed numbers, the
choice, the code's commit); `record`, when given, receives a copy (the repository's
`calibration/<name>.json`) and a markdown table beside it.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import subprocess
from typing import Sequence

import numpy as np

from warm_jax import checks
from warm_jax.checks import check_range, run_only
from warm_jax.fileio import atomic_write, write_json
from warm_jax.layout import RunLayout
from warm_jax.metrics import read_jsonl
from warm_jax.models import ModelConfig
from warm_jax.rl.reinforce import RLConfig
from warm_jax.rl.inputs import shared_inputs
from warm_jax.rl.stage import PolicyConfig, train_runs


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One RL regime: Adam's learning rate, the number of RL steps, the KL penalty α."""
    learning_rate: float
    steps: int
    alpha: float

    def __post_init__(self):
        check_range("Candidate", "learning_rate", self.learning_rate, 0.0, 1.0, lo_open=True)
        check_range("Candidate", "steps", self.steps, 1)
        check_range("Candidate", "alpha", self.alpha, 0.0)

    @property
    def pressure(self) -> float:
        """learning rate × steps: how far RL can move the policy (α held equal)."""
        return self.learning_rate * self.steps


@dataclasses.dataclass(frozen=True)
class PassRule:
    """Over-optimisation of the single-RM baseline, as the pass rule measures it (module doc)."""
    min_rise: float = 0.1        # control reward, peak − step 0
    min_fall: float = 0.3        # control reward, peak − last step
    max_final_kl: float = 20.0   # KL(π ‖ π_SFT) at the last step
    min_seeds: int = 3           # pilot seeds that must pass

    def __post_init__(self):
        check_range("PassRule", "max_final_kl", self.max_final_kl, 0.0)
        check_range("PassRule", "min_seeds", self.min_seeds, 1)


def _halves(n: int) -> tuple[slice, slice]:
    return slice(0, n // 2), slice(n // 2, None)


def judge_run(rows: Sequence[dict], steps: int, rule: PassRule) -> dict:
    """One pilot run's numbers on its evaluations up to `steps` (rows in step order, step 0 first):
    the peak step (picked on the first half of the prompts), and on the second half the rise from
    step 0 to the peak, the fall from the peak to step `steps`, the final KL, and whether it
    passes."""
    rows = [r for r in rows if r["step"] <= steps]
    if not rows or rows[0]["step"] != 0 or rows[-1]["step"] != steps:
        raise ValueError(f"calibration: need evaluations at step 0 and at step {steps}, got steps "
                         f"{[r['step'] for r in rows]}")
    n = len(rows[0]["gold_per_prompt"])
    if n < 2:
        raise ValueError("calibration: need at least 2 held-out prompts (one per half)")
    select, judged = _halves(n)
    mean = lambda r, part: float(np.mean(r["gold_per_prompt"][part]))  # noqa: E731
    trained = rows[1:] or rows
    peak = max(trained, key=lambda r: mean(r, select))
    rise = mean(peak, judged) - mean(rows[0], judged)
    fall = mean(peak, judged) - mean(rows[-1], judged)
    final_kl = float(rows[-1]["kl"])
    passes = rise >= rule.min_rise and fall >= rule.min_fall and final_kl <= rule.max_final_kl
    return {"peak_step": int(peak["step"]), "rise": round(rise, 4), "fall": round(fall, 4),
            "final_kl": round(final_kl, 4), "passes": bool(passes)}


def judge_candidate(runs: dict[int, Sequence[dict]], cand: Candidate, rule: PassRule) -> dict:
    """{seed: rows} of one candidate's runs -> its per-seed numbers and whether it passes."""
    per_seed = {int(s): judge_run(rows, cand.steps, rule) for s, rows in sorted(runs.items())}
    n_pass = sum(v["passes"] for v in per_seed.values())
    return {"per_seed": per_seed, "seeds_passing": n_pass, "passes": n_pass >= rule.min_seeds}


def _commit() -> dict:
    """The code's commit and whether its warm_jax/ or gin/ files differ from it (None outside
    git)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "warm_jax", "gin"],
                               cwd=os.path.join(here, "..", ".."), capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty)}


def check_pilot(task, seeds: Sequence[int], evaluation_seeds: Sequence[int], split: str,
                n_prompts: int) -> dict:
    """Refuse pilot seeds among the evaluation seeds and pilot prompts among the evaluation
    prompts; returns what was checked, for the record."""
    overlap = sorted(set(seeds) & set(int(s) for s in evaluation_seeds))
    if overlap:
        raise ValueError(f"CalibrationConfig.seeds {overlap} are evaluation seeds "
                         f"({tuple(evaluation_seeds)}): pilot seeds must be disjoint from them")
    if not task.has_oracle:
        raise ValueError("calibrate_regime: the task has no oracle (control reward) to judge "
                         "over-optimisation by")
    pilot = np.asarray(task.prompts(split)[:n_prompts])
    held_out = {p.tobytes() for p in np.asarray(task.prompts("eval"))}
    shared = sum(p.tobytes() in held_out for p in pilot)
    if split == "eval" or shared:
        raise ValueError(f"calibrate_regime: the {split!r} prompts share {shared} rows with the "
                         "evaluation prompts; the calibration needs a disjoint split ('pilot')")
    return {"split": split, "n": int(len(pilot)), "shared_with_eval": 0,
            "evaluation_seeds": sorted(int(s) for s in evaluation_seeds)}


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """The calibration stage (module doc): `candidates` judged in order on the pilot `seeds`,
    none of which may be among `evaluation_seeds`, on the task's `eval_split` prompts."""
    seeds: Sequence[int] = ()
    evaluation_seeds: Sequence[int] = ()
    candidates: Sequence[Candidate] = ()
    rule: PassRule = PassRule()
    rl: RLConfig = RLConfig()
    rm_name: str = "clean"
    chunk: int = 25
    eval_prompts: int = 256
    eval_split: str = "pilot"
    record: str | None = run_only(None)
    name: str = run_only("round1")

    def __post_init__(self):
        checks.seeds(self, "seeds")
        checks.seeds(self, "evaluation_seeds", empty_ok=True)
        checks.integers(self, 1, "chunk", "eval_prompts")
        try:
            cands = tuple(c if isinstance(c, Candidate) else Candidate(*c) for c in self.candidates)
        except TypeError:
            checks.fail(self, "candidates", "(learning_rate, steps, alpha) triples")
        if not cands or len(set(cands)) != len(cands):
            checks.fail(self, "candidates", "at least one candidate, none listed twice")
        bad = [c for c in cands if c.steps % self.chunk]
        if bad:
            checks.fail(self, "candidates", f"steps that are multiples of chunk={self.chunk}",
                        value=bad)
        object.__setattr__(self, "candidates", cands)
        if self.rule.min_seeds > len(self.seeds):
            checks.fail(self, "seeds", f"at least PassRule.min_seeds={self.rule.min_seeds} seeds")


def calibrate_regime(*, workdir: str, task, model_cfg: ModelConfig, cfg: CalibrationConfig) -> dict:
    """Judge `cfg.candidates` in order on the pilot seeds (module doc); returns the record."""
    seeds, cands, rule, rl, chunk = cfg.seeds, cfg.candidates, cfg.rule, cfg.rl, cfg.chunk
    eval_split, eval_prompts, name, record = cfg.eval_split, cfg.eval_prompts, cfg.name, cfg.record
    checked = check_pilot(task, seeds, cfg.evaluation_seeds, eval_split, eval_prompts)
    code = _commit()   # the code as it starts, not as it may be edited while the stage runs
    layout = RunLayout(workdir)
    root = layout.calibration(name)
    config = dict(task=task, model_cfg=model_cfg, **checks.recorded(cfg, drop=("evaluation_seeds",)))
    groups = collections.defaultdict(list)   # learning rate -> its candidates
    for c in cands:
        groups[c.learning_rate].append(c)
    results, chosen, shared = [], None, {}
    with layout.stage("calibrate", root, config):
        for c in cands:
            if chosen is not None:
                results.append({"candidate": dataclasses.asdict(c), "pressure": c.pressure,
                                "status": "not run: an earlier candidate passed"})
                continue
            gdir = os.path.join(root, f"lr_{c.learning_rate:g}")
            if not os.path.exists(RunLayout.final_rows(gdir)):
                group = groups[c.learning_rate]
                if not shared:
                    shared.update(shared_inputs(layout, task, model_cfg, rl, None))
                rl_cfg = PolicyConfig(
                    rm_name=cfg.rm_name, methods=("single",),
                    alphas=tuple(sorted({g.alpha for g in group})), seeds=seeds,
                    rl=dataclasses.replace(rl, learning_rate=c.learning_rate),
                    num_steps=max(g.steps for g in group), chunk=chunk, log_every=chunk,
                    eval_prompts=eval_prompts, eval_split=eval_split)
                train_runs(layout, gdir, "single", task, model_cfg, rl_cfg,
                           runs=rl_cfg.runs("single"), **shared)
            runs = collections.defaultdict(list)
            for r in read_jsonl(RunLayout.eval_rows(gdir)):
                if r["run_alpha"] == c.alpha:
                    runs[r["seed"]].append(r)
            verdict = judge_candidate({s: sorted(v, key=lambda r: r["step"])
                                       for s, v in runs.items()}, c, rule)
            results.append({"candidate": dataclasses.asdict(c), "pressure": c.pressure,
                            "status": "passed" if verdict["passes"] else "failed", **verdict})
            if verdict["passes"]:
                chosen = dataclasses.asdict(c)
    out = {"what": "RL regime calibration (warm_jax.rl.calibrate): the first candidate whose "
                   "single-RM runs over-optimise on the pilot seeds",
           "round": name, "method": "single", "pilot_seeds": list(seeds), "prompts": checked,
           "rule": dataclasses.asdict(rule), "rl": dataclasses.asdict(rl), "chunk": chunk,
           "candidates": [dataclasses.asdict(c) for c in cands], "results": results,
           "chosen": chosen, **code}
    write_json(os.path.join(root, "record.json"), out)
    if record:
        write_json(record, out)
        atomic_write(os.path.splitext(record)[0] + ".md", record_table(out))
    return out


def record_table(rec: dict) -> str:
    """The calibration record as a markdown table: one row per candidate and pilot seed."""
    rule = rec["rule"]
    lines = [f"RL regime calibration: pilot seeds {rec['pilot_seeds']}, "
             f"{rec['prompts']['n']} {rec['prompts']['split']!r} prompts (none an evaluation "
             f"prompt), code {str(rec.get('commit'))[:12]}{' (modified)' if rec.get('dirty') else ''}."
             f" Pass: rise ≥ {rule['min_rise']}, fall ≥ {rule['min_fall']}, final KL ≤ "
             f"{rule['max_final_kl']} in ≥ {rule['min_seeds']} of {len(rec['pilot_seeds'])} seeds.",
             "", "| candidate (lr, steps, α) | status | seed | peak step | rise | fall | final KL | "
             "passes |", "|---|---|---|---|---|---|---|---|"]
    for res in rec["results"]:
        c = res["candidate"]
        name = f"{c['learning_rate']:g}, {c['steps']}, {c['alpha']:g}"
        if "per_seed" not in res:
            lines.append(f"| {name} | {res['status']} | | | | | | |")
            continue
        for s, v in res["per_seed"].items():
            lines.append(f"| {name} | {res['status']} ({res['seeds_passing']} seeds pass) | {s} | "
                         f"{v['peak_step']} | {v['rise']:+.3f} | {v['fall']:+.3f} | "
                         f"{v['final_kl']:.2f} | {'yes' if v['passes'] else 'no'} |")
    chosen = rec["chosen"]
    lines += ["", "Chosen: " + (f"learning rate {chosen['learning_rate']:g}, {chosen['steps']} "
                                f"steps, α = {chosen['alpha']:g}" if chosen else "none passed")]
    return "\n".join(lines) + "\n"

