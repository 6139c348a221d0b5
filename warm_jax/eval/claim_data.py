"""What every claim reads: the run's rows loaded from its work directory (`load`), the run's WARM
names, the paired units a claim is decided on, the held-out RL evaluation rows, and the margins
declared with the claims (warm_jax.eval.claims assembles the registry of them all).

Method names and M come from the run (its `warm_M<k>` rewards); the one WARM the comparisons
use is pinned at M = WARM_M where the run has it (`main_warm`).
"""
from __future__ import annotations

import collections
import glob
import os
import re
from typing import Any

import numpy as np

from warm_jax.eval.evidence import Units
from warm_jax.layout import RunLayout
from warm_jax.metrics import read_jsonl

ID_DELTA = 0.02          # |WA − ENS| accuracy on the ID split that still counts as "WA ≈ ENS"
HACK_MARGIN = 0.1        # control-reward drop from its peak that counts as hacking (WARP, M = 10)
# rl_single_hacking's margins. The fall's is the calibration rule's (experiments/calibrate.gin),
# which picked the regime on pilot seeds. The rise is tested against 0, as the paper states it
# ("rises, then falls"): the pilot rises were +0.08..+0.14, and on 128 judged prompts per seed
# a test against the rule's 0.1 could only be won by luck, or "contradicted" by a real rise
RISE_MARGIN, FALL_MARGIN = 0.0, 0.3
# where the RL fronts are compared (KL to the SFT policy); a claim uses those every run reaches.
# The calibrated regime's runs reach KL 5-20: budgets up to 16 cover them
KL_BUDGETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
# nearest the training data first; "ood" is the run's OOD split (`ood_split`)
TREND_SUBSETS = ("train_corrupt", "train_clean", "validation", "ood")
OOD_NOTE = ("the sampled `ood` split: response pairs of the pretrained and SFT policies; in runs "
            "without it, the offline `test` split")
LABEL_TEMPERATURE = 0.8  # the preference oracle's Bradley–Terry temperature (the toy labeller's)
# The WARM of the comparisons with other methods: the paper's M = 6 (its best-of-N and RL figures).
# FULL=1 also averages M = 10 (the four weakest of ten members included); that one is judged
# against M = 6 on its own claims (`claims_m`), not silently swapped into the others.
WARM_M = 6
# the ablation populations beside the main clean one (claims_rm)
PROBE_ABLATION, BAKLAVA_ABLATION = "clean_noprobe", "clean_onesft"


def rows_of(path):
    return read_jsonl(path) if os.path.exists(path) else []


def seed_of(path: str) -> int:
    return int(path.rsplit("seed_", 1)[1])


def load(workdir: str, rm_name: str = "clean") -> dict[str, Any]:
    """Every JSONL a claim or figure reads, per chain seed where it has one."""
    layout = RunLayout(workdir)
    analysis = {}
    rm_root = layout.path("rm")
    names = sorted(set(("clean", "corrupt")) | set(os.listdir(rm_root) if os.path.isdir(rm_root)
                                                    else ()))
    for name in names:
        chains = sorted(glob.glob(os.path.join(layout.rm(name), "seed_*")), key=seed_of)
        analysis[name] = {seed_of(c): rows_of(RunLayout.analysis_rows(c)) for c in chains}
    # the best-of-N and RL of the other labels' reward models (FULL=1: "corrupt"), if run
    other = "corrupt" if rm_name == "clean" else "clean"
    warp_dir = layout.warp(rm_name)
    warp = {os.path.basename(os.path.dirname(p)): read_jsonl(p)
            for p in sorted(glob.glob(os.path.join(warp_dir, "*", "final.jsonl")))}
    return {"analysis": analysis, **policy_rows(layout, rm_name),
            f"{other}_policy": policy_rows(layout, other), "warp": warp}


def policy_rows(layout: RunLayout, rm_name: str) -> dict[str, Any]:
    """Best-of-N rows and, per RL method, its train / eval / final rows over `rm/<rm_name>`."""
    rl_dir = layout.rl(rm_name)
    methods = sorted(os.path.basename(os.path.dirname(p))
                     for p in glob.glob(os.path.join(rl_dir, "*", "train.jsonl")))
    per_method = lambda f: {m: rows_of(os.path.join(rl_dir, m, f)) for m in methods}  # noqa: E731
    return {"bon": rows_of(layout.bon(rm_name)), "train": per_method("train.jsonl"),
            "eval": per_method("eval.jsonl"), "final": per_method("final.jsonl")}


def warm_names(methods) -> list[str]:
    """The run's WARM rewards of M >= 2, smallest M first (warm_M1 is the single RM)."""
    return sorted((m for m in methods if re.fullmatch(r"warm_M\d+", m) and m != "warm_M1"),
                  key=lambda m: int(m[len("warm_M"):]))


def warm_m(name: str) -> int:
    return int(name[len("warm_M"):])


def main_warm(methods) -> str | None:
    """The WARM the claims compare: warm_M<WARM_M> where the run has it, else its largest M below
    WARM_M (the tiny configs' warm_M2), else its largest; None without a WARM of M >= 2. For runs
    whose largest M is at most WARM_M (the default demo, the tiny ones) that is their largest."""
    w = warm_names(methods)
    up_to = [m for m in w if warm_m(m) <= WARM_M]
    return up_to[-1] if up_to else (w[-1] if w else None)


def beyond_warm(methods) -> str | None:
    """The run's largest WARM past the main one (FULL=1: warm_M10), or None."""
    main = main_warm(methods)
    w = [m for m in warm_names(methods) if main and warm_m(m) > warm_m(main)]
    return w[-1] if w else None


def prompt_means(per_seed: dict) -> dict:
    """One unit per prompt and seed: a seed's α runs share their prompts, so their per-prompt
    values are averaged over α (not concatenated, which would count each prompt once per α)."""
    return {s: np.mean(np.stack(v), 0) for s, v in per_seed.items()}


def seed_units(per_seed: dict, **extra) -> Units | None:
    seeds = sorted(s for s, v in per_seed.items() if v is not None and np.size(v))
    if not seeds:
        return None
    return Units([per_seed[s] for s in seeds], extra={"seeds": seeds, **extra})


def part_units(parts: dict[str, dict], **extra) -> Units | None:
    """A compound claim's Units: {part: {seed: values}}, over the seeds every part has."""
    seeds = sorted(set.intersection(*(
        {s for s, v in p.items() if v is not None and np.size(v)} for p in parts.values())))
    if not seeds:
        return None
    units = {n: Units([p[s] for s in seeds]) for n, p in parts.items()}
    first = next(iter(units.values()))
    return Units(first.per_seed, extra={"seeds": seeds, **extra}, parts=units)


def corruption_accuracy(rows, prefix, split):
    """The `corruption` row's accuracy of the model named `prefix`… (wa_M, ens_M, member_) on
    `split`; NaN if the run has none."""
    return next((r["acc"] for r in rows if r["analysis"] == "corruption"
                 and r["model"].startswith(prefix) and r["split"] == split), np.nan)


def ood_split(rows) -> str:
    """The run's OOD split: the sampled `ood` pairs (`warm_jax.ood`) where the analyses have them,
    else the offline `test` pairs of the shifted response policy (runs without that stage)."""
    return "ood" if any(r.get("split") == "ood" for r in rows) else "test"



# --- held-out RL evaluations --------------------------------------------------------------------

def eval_runs(d, method) -> dict[tuple, list[dict]]:
    """{(alpha, seed): held-out evaluation rows in step order}."""
    out = collections.defaultdict(list)
    for r in d["eval"].get(method, []):
        out[(r["run_alpha"], r["seed"])].append(r)
    return {k: sorted(v, key=lambda r: r["step"]) for k, v in out.items()}


def halves(rows):
    """(selection, judged) slices of the held-out prompts: a step picked on the first half is
    judged on the second, so the pick's luck on its own prompts does not inflate what is judged."""
    n = len(rows[0]["gold_per_prompt"])
    if n < 2 or any(len(r["gold_per_prompt"]) != n for r in rows):
        raise ValueError(f"held-out evaluations need >= 2 prompts, the same at every step; got "
                         f"{sorted({len(r['gold_per_prompt']) for r in rows})}")
    return slice(0, n // 2), slice(n // 2, None)


def best_step(rows, select):
    """The evaluation row of highest mean control reward on the selection prompts."""
    return max(rows, key=lambda r: np.mean(r["gold_per_prompt"][select]))


def peak_row(rows, select):
    """The RL evaluation (step > 0) of highest mean control reward on the selection prompts."""
    return best_step([r for r in rows if r["step"] > 0] or rows, select)


def from_step0(rows):
    if not rows or rows[0]["step"] != 0:
        raise ValueError(f"held-out evaluations must start at step 0 (the SFT policy), got steps "
                         f"{[r['step'] for r in rows][:3]}...")
    return rows


def rise_and_fall(rows) -> tuple[np.ndarray, np.ndarray]:
    """Per judged prompt: control reward at the peak RL step (picked on the selection prompts)
    − at step 0, and at the peak − at the last evaluation."""
    rows = from_step0(rows)
    select, judged = halves(rows)
    peak = np.asarray(peak_row(rows, select)["gold_per_prompt"][judged])
    return (peak - np.asarray(rows[0]["gold_per_prompt"][judged]),
            peak - np.asarray(rows[-1]["gold_per_prompt"][judged]))


def per_prompt_at_kl(rows, kl: float) -> np.ndarray:
    """Each prompt's control reward where the run first reaches KL `kl` (`value_at_kl`'s rule:
    the running maximum of KL, linear between evaluations), from its `gold_per_prompt`."""
    kl_E = np.asarray([r["kl"] for r in rows], np.float64)
    keep = np.concatenate([[True], kl_E[1:] > np.maximum.accumulate(kl_E)[:-1]])
    g_ExP = np.asarray([r["gold_per_prompt"] for r in rows], np.float64)[keep]
    x = kl_E[keep]
    if not x[0] <= kl <= x[-1]:
        raise ValueError(f"KL {kl} outside the run's reach [{x[0]}, {x[-1]}]")
    j = min(int(np.searchsorted(x, kl, side="right")), len(x) - 1)
    i = max(j - 1, 0)
    w = 0.0 if x[j] == x[i] else (kl - x[i]) / (x[j] - x[i])
    return (1 - w) * g_ExP[i] + w * g_ExP[j]


def fall_at_kl(rows, kl: float) -> np.ndarray:
    """Per judged prompt: control reward at the run's peak among its evaluations up to KL `kl`
    (picked on the selection prompts) − where it first reaches `kl`."""
    rows = from_step0(rows)
    select, judged = halves(rows)
    upto = [r for r in rows if r["kl"] <= kl] or rows[:1]
    peak = np.asarray(peak_row(upto, select)["gold_per_prompt"][judged])
    return peak - per_prompt_at_kl(rows, kl)[judged]


def reach(rows) -> float:
    return float(max(r["kl"] for r in rows))
