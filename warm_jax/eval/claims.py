"""WARM's findings, one registry entry each, decided from a work directory's JSONL alone.

Every claim is declared here (the best-of-N and RL ones in `claims_policy`), before any run (`warm_jax.eval.evidence.register`): the finding,
the paper's figure, the statistic and its unit, the paper's sign (or an equivalence margin).
Its compute function turns the loaded run into `Units`: per chain seed, paired unit-level
differences (WA − ENS correctness on the same evaluation pair; method A − B on the same prompt) or
one number per seed. `evidence.decide` then gives the outcome (reproduced / contradicted /
inconclusive) from a paired, seed-aware interval: a tie is never "reproduced".

Method names and M come from the run (its `warm_M<k>` rewards); the one WARM the comparisons
use is pinned at M = WARM_M where the run has it (`main_warm`).
"""
from __future__ import annotations

import glob
import os
import re
from typing import Any

import numpy as np

from warm_jax.eval import evidence as E
from warm_jax.eval.evidence import Units, register
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
REGISTRY: dict = {}


def _rows(path):
    return read_jsonl(path) if os.path.exists(path) else []


def _seed_of(path: str) -> int:
    return int(path.rsplit("seed_", 1)[1])


def load(workdir: str, rm_name: str = "clean") -> dict[str, Any]:
    """Every JSONL a claim or figure reads, per chain seed where it has one."""
    layout = RunLayout(workdir)
    analysis = {}
    rm_root = layout.path("rm")
    names = sorted(set(("clean", "corrupt")) | set(os.listdir(rm_root) if os.path.isdir(rm_root)
                                                    else ()))
    for name in names:
        chains = sorted(glob.glob(os.path.join(layout.rm(name), "seed_*")), key=_seed_of)
        analysis[name] = {_seed_of(c): _rows(os.path.join(c, "analysis.jsonl")) for c in chains}
    # the best-of-N and RL of the other labels' reward models (FULL=1: "corrupt"), if run
    other = "corrupt" if rm_name == "clean" else "clean"
    warp_dir = layout.path("warp", rm_name)
    warp = {os.path.basename(os.path.dirname(p)): read_jsonl(p)
            for p in sorted(glob.glob(os.path.join(warp_dir, "*", "final.jsonl")))}
    return {"analysis": analysis, **policy_rows(layout, rm_name),
            f"{other}_policy": policy_rows(layout, other), "warp": warp}


def policy_rows(layout: RunLayout, rm_name: str) -> dict[str, Any]:
    """Best-of-N rows and, per RL method, its train / eval / final rows over `rm/<rm_name>`."""
    rl_dir = layout.rl(rm_name)
    methods = sorted(os.path.basename(os.path.dirname(p))
                     for p in glob.glob(os.path.join(rl_dir, "*", "train.jsonl")))
    per_method = lambda f: {m: _rows(os.path.join(rl_dir, m, f)) for m in methods}  # noqa: E731
    return {"bon": _rows(layout.bon(rm_name)), "train": per_method("train.jsonl"),
            "eval": per_method("eval.jsonl"), "final": per_method("final.jsonl")}


def warm_names(methods) -> list[str]:
    """The run's WARM rewards of M >= 2, smallest M first (warm_M1 is the single RM)."""
    return sorted((m for m in methods if re.fullmatch(r"warm_M\d+", m) and m != "warm_M1"),
                  key=lambda m: int(m[len("warm_M"):]))


def _warm_m(name: str) -> int:
    return int(name[len("warm_M"):])


def main_warm(methods) -> str | None:
    """The WARM the claims compare: warm_M<WARM_M> where the run has it, else its largest M below
    WARM_M (the tiny configs' warm_M2), else its largest; None without a WARM of M >= 2. For runs
    whose largest M is at most WARM_M (the default demo, the tiny ones) that is their largest."""
    w = warm_names(methods)
    up_to = [m for m in w if _warm_m(m) <= WARM_M]
    return up_to[-1] if up_to else (w[-1] if w else None)


def beyond_warm(methods) -> str | None:
    """The run's largest WARM past the main one (FULL=1: warm_M10), or None."""
    main = main_warm(methods)
    w = [m for m in warm_names(methods) if main and _warm_m(m) > _warm_m(main)]
    return w[-1] if w else None


def _per_prompt(per_seed: dict) -> dict:
    """One unit per prompt and seed: a seed's α runs share their prompts, so their per-prompt
    values are averaged over α (not concatenated, which would count each prompt once per α)."""
    return {s: np.mean(np.stack(v), 0) for s, v in per_seed.items()}


def _units(per_seed: dict, **extra) -> Units | None:
    seeds = sorted(s for s, v in per_seed.items() if v is not None and np.size(v))
    if not seeds:
        return None
    return Units([per_seed[s] for s in seeds], extra={"seeds": seeds, **extra})


def _parts(parts: dict[str, dict], **extra) -> Units | None:
    """A compound claim's Units: {part: {seed: values}}, over the seeds every part has."""
    seeds = sorted(set.intersection(*(
        {s for s, v in p.items() if v is not None and np.size(v)} for p in parts.values())))
    if not seeds:
        return None
    units = {n: Units([p[s] for s in seeds]) for n, p in parts.items()}
    first = next(iter(units.values()))
    return Units(first.per_seed, extra={"seeds": seeds, **extra}, parts=units)


# --- reward models (Figs. 3-5) ----------------------------------------------------------------

def ood_split(rows) -> str:
    """The run's OOD split: the sampled `ood` pairs (`warm_jax.ood`) where the analyses have them,
    else the offline `test` pairs of the shifted response policy (runs without that stage)."""
    return "ood" if any(r.get("split") == "ood" for r in rows) else "test"


def _unit_values(rows, analysis, split, what):
    vals = [r["values"] for r in rows if r.get("analysis") == analysis and r["split"] == split
            and r.get("what") == what]
    return np.concatenate(vals) if vals else None


def _lmc_units(rows, split, what):
    """Per evaluation pair, the mean over the member pairs of increasing diversity (not the
    'same_run' pair, which is a control): each evaluation pair is one unit, counted once."""
    vals = [r["values"] for r in rows if r.get("analysis") == "lmc_units" and r["split"] == split
            and r.get("what") == what and r.get("pair") != "same_run"]
    return np.mean(vals, 0) if vals else None


def _split_units(d, name, split, what="wa_minus_ens"):
    """`split` "ood" is each seed's `ood_split`."""
    per_seed, used = {}, set()
    for s, rows in d["analysis"][name].items():
        sp = ood_split(rows) if split == "ood" else split
        used.add(sp)
        per_seed[s] = _unit_values(rows, "units", sp, what)
    return _units(per_seed, labels=name, split="/".join(sorted(used)) or split)


@register(registry=REGISTRY, id="lmc_above_diag", paper_ref="Fig. 3",
          finding="WA of two members sits above the diagonal between them (linear mode "
                  "connectivity)", figure="lmc",
          statistic="correctness of WA((1−λ)φa + λφb) − ((1−λ)·correct_a + λ·correct_b), mean "
                    "over interior λ and over the diversity member pairs, per evaluation pair "
                    "(validation and OOD)",
          unit="pair", kind="directional", direction=+1, primary=True)
def lmc_above_diag(d):
    per_seed = {}
    for s, rows in d["analysis"]["clean"].items():
        parts = [_lmc_units(rows, sp, "wa_minus_diag") for sp in ("validation", ood_split(rows))]
        parts = [p for p in parts if p is not None]
        per_seed[s] = np.concatenate(parts) if parts else None
    return _units(per_seed)


@register(registry=REGISTRY, id="lmc_wa_approx_ens", paper_ref="Fig. 3",
          finding="Along the path between two members, WA ≈ ENS in distribution",
          figure="lmc", statistic="correctness of WA(λ) − ENS(λ), mean over interior λ and over "
                                  "the diversity member pairs, per validation pair",
          unit="pair", kind="equivalence", delta=ID_DELTA)
def lmc_wa_approx_ens(d):
    return _units({s: _lmc_units(rows, "validation", "wa_minus_ens")
                   for s, rows in d["analysis"]["clean"].items()})


@register(registry=REGISTRY, id="wa_approx_ens_id", paper_ref="Fig. 4",
          finding="WA ≈ ENS in distribution (clean labels, all M members)", figure="corruption",
          statistic="correctness of WA − ENS per validation pair", unit="pair",
          kind="equivalence", delta=ID_DELTA, primary=True)
def wa_approx_ens_id(d):
    return _split_units(d, "clean", "validation")


@register(registry=REGISTRY, id="wa_memorises_less", paper_ref="Figs. 4-5",
          finding="With 25% flipped labels, WA fits the flipped training labels less than ENS",
          figure="corruption", statistic="agreement with the flipped label, WA − ENS, per "
                                         "corrupted training pair", unit="pair",
          kind="directional", direction=-1)
def wa_memorises_less(d):
    return _split_units(d, "corrupt", "train_corrupt")


@register(registry=REGISTRY, id="wa_beats_ens_ood", paper_ref="Fig. 5",
          finding="Out of distribution WA beats ENS (clean labels)", figure="corruption",
          statistic=f"correctness of WA − ENS per OOD pair ({OOD_NOTE})", unit="pair",
          kind="directional", direction=+1)
def wa_beats_ens_ood(d):
    return _split_units(d, "clean", "ood")


@register(registry=REGISTRY, id="wa_beats_ens_ood_corrupt", paper_ref="Fig. 5",
          finding="Out of distribution WA beats ENS (25% flipped labels)", figure="corruption",
          statistic=f"correctness of WA − ENS per OOD pair ({OOD_NOTE})", unit="pair",
          kind="directional", direction=+1, primary=True)
def wa_beats_ens_ood_corrupt(d):
    return _split_units(d, "corrupt", "ood")


@register(registry=REGISTRY, id="wa_vs_ens_grows_off_train", paper_ref="Fig. 5",
          finding="The further from the training distribution, the better WA against ENS "
                  "(25% flipped labels: train-corrupt, train-clean, validation, OOD)",
          figure="corruption",
          statistic="per seed, least-squares slope of mean(WA − ENS correctness) over the subsets "
                    f"{TREND_SUBSETS} at positions 0, 1, 2, 3", unit="seed", kind="directional",
          direction=+1)
def wa_vs_ens_grows_off_train(d):
    per_seed = {}
    for s, rows in d["analysis"]["corrupt"].items():
        means = [_unit_values(rows, "units", ood_split(rows) if k == "ood" else k, "wa_minus_ens")
                 for k in TREND_SUBSETS]
        if all(m is not None for m in means):
            per_seed[s] = [float(np.polyfit(np.arange(len(means)), [m.mean() for m in means], 1)[0])]
    return _units(per_seed, subsets=list(TREND_SUBSETS))


# --- ablations: the shared linear probe, Baklava (clean labels, all M members, OOD pairs) ------
PROBE_ABLATION, BAKLAVA_ABLATION = "clean_noprobe", "clean_onesft"


def _ablation_units(d, variant, what, **extra):
    """Per OOD pair and seed, `what` of the main clean population − of the `variant` population
    (the same evaluation pairs; the variant differs in one thing)."""
    if variant not in d["analysis"]:
        return None
    per_seed = {}
    for s, rows in d["analysis"]["clean"].items():
        other = d["analysis"][variant].get(s)
        if not other:
            continue
        a, b = (_unit_values(r, "units", ood_split(r), what) for r in (rows, other))
        if a is not None and b is not None:
            if len(a) != len(b):
                raise ValueError(f"{variant} seed {s}: {len(b)} OOD units against {len(a)} in "
                                 "clean: the two populations were not scored on the same pairs")
            per_seed[s] = a - b
    return _units(per_seed, variant=variant, what=what, **extra)


@register(registry=REGISTRY, id="probe_helps_wa_vs_ens", paper_ref="slides (last)",
          finding="Linear probing first helps WA against ENS: WA − ENS is higher when the members "
                  "start from the shared linear probe than from a fresh head each",
          figure="ablations",
          statistic="per OOD pair, (WA − ENS correctness) with the probe − (WA − ENS correctness) "
                    "with a fresh head per member (clean labels, all M members)", unit="pair",
          kind="directional", direction=+1)
def probe_helps_wa_vs_ens(d):
    return _ablation_units(d, PROBE_ABLATION, "wa_minus_ens")


@register(registry=REGISTRY, id="baklava_more_diverse", paper_ref="Fig. 3 (Baklava)",
          finding="Baklava makes the members more diverse: members fine-tuned from three SFT "
                  "checkpoints disagree more than members from one",
          figure="ablations",
          statistic="per OOD pair, share of member pairs that rank it differently, Baklava − "
                    "one SFT checkpoint (clean labels)", unit="pair", kind="directional",
          direction=+1)
def baklava_more_diverse(d):
    return _ablation_units(d, BAKLAVA_ABLATION, "disagreement")


@register(registry=REGISTRY, id="baklava_helps_wa", paper_ref="Fig. 3 (Baklava)",
          finding="Baklava improves the weight average: WA of members from three SFT checkpoints "
                  "is more accurate than WA of members from one",
          figure="ablations",
          statistic="per OOD pair, WA correctness, Baklava − one SFT checkpoint (clean labels, "
                    "all M members)", unit="pair", kind="directional", direction=+1)
def baklava_helps_wa(d):
    return _ablation_units(d, BAKLAVA_ABLATION, "wa_correct")


def compute_claims(workdir: str, data: dict | None = None, **decide_kw) -> list[dict]:
    """Every claim decided on `workdir`'s rows (`data`: what `load(workdir)` already returned)."""
    return E.evaluate(load(workdir) if data is None else data, registry=REGISTRY, **decide_kw)


# the best-of-N and RL claims, registered after those above (the registry's order is the report's)
from warm_jax.eval import claims_policy  # noqa: E402,F401
from warm_jax.eval import claims_m  # noqa: E402,F401
from warm_jax.eval import claims_warp  # noqa: E402,F401
