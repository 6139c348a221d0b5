"""WARM's reward-model findings (Figs. 3-5, the slides' ablations), one registry entry each.

Every claim is declared before any run (`warm_jax.eval.evidence.register`): the finding, the
paper's figure, the statistic and its unit, the paper's sign (or an equivalence margin). Its
compute function turns the loaded run (`claim_data.load`) into `Units`: per chain seed, paired
unit-level differences (WA − ENS correctness on the same evaluation pair) or one number per seed.
"""
from __future__ import annotations

import numpy as np

from warm_jax.eval.claim_data import (BAKLAVA_ABLATION, ID_DELTA, OOD_NOTE, PROBE_ABLATION,
                                      TREND_SUBSETS, ood_split, seed_units)
from warm_jax.eval.evidence import register

REGISTRY: dict = {}   # assembled in order by warm_jax.eval.claims


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
    return seed_units(per_seed, labels=name, split="/".join(sorted(used)) or split)


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
    return seed_units(per_seed)


@register(registry=REGISTRY, id="lmc_wa_approx_ens", paper_ref="Fig. 3",
          finding="Along the path between two members, WA ≈ ENS in distribution",
          figure="lmc", statistic="correctness of WA(λ) − ENS(λ), mean over interior λ and over "
                                  "the diversity member pairs, per validation pair",
          unit="pair", kind="equivalence", delta=ID_DELTA)
def lmc_wa_approx_ens(d):
    return seed_units({s: _lmc_units(rows, "validation", "wa_minus_ens")
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
    return seed_units(per_seed, subsets=list(TREND_SUBSETS))


# --- ablations: the shared linear probe, Baklava (clean labels, all M members, OOD pairs) ------

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
    return seed_units(per_seed, variant=variant, what=what, **extra)


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
