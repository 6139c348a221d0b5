"""The registry of WARM's findings, assembled in one place and in one order: the reward-model
claims (`claims_rm`), best-of-N and RL (`claims_policy`), the same best-of-N and RL claims with the
reward models of 25% flipped labels (`CORRUPT_MIRRORED`), M = 10 (`claims_m`), then WARP
(`claims_warp`). Each family declares its claims (`warm_jax.eval.evidence.register`) before any run;
`compute_claims` decides them all from a work directory's JSONL alone (`evidence.evaluate`): the
outcome (reproduced / contradicted / inconclusive) from a paired, seed-aware interval, a tie never
"reproduced". What the claims read, and the margins they declare: `claim_data`.
"""
from __future__ import annotations

import dataclasses

from warm_jax.eval import claims_m, claims_policy, claims_rm, claims_warp
from warm_jax.eval import evidence as E
from warm_jax.eval.claim_data import load
from warm_jax.eval.evidence import Claim

# best-of-N and RL claims judged again on the corrupted-label reward models (Figs. 6-8b): each
# mirror is the claim `<id>_corrupt`, computed the same way on the run's "corrupt_policy" rows
CORRUPT_MIRRORED = ("bon_warm_beats_smaller_m", "bon_warm_beats_single", "bon_warm_beats_ens",
                    "rl_single_hacking", "warm_delays_collapse", "warm_smaller_fall",
                    "rl_front_at_kl", "win_rate_warm_vs_single", "win_rate_warm_vs_sft")


def on_corrupt_labels(claim: Claim) -> Claim:
    """`claim` judged on the corrupted-label reward models' best-of-N and RL (exploratory)."""
    compute = claim.compute
    return dataclasses.replace(
        claim, id=f"{claim.id}_corrupt", paper_ref=f"{claim.paper_ref} (corrupt labels)",
        finding=f"{claim.finding} — reward models trained on 25% flipped labels",
        figure=f"{claim.figure}_corrupt", primary=False,
        compute=lambda d: compute(d["corrupt_policy"]) if d.get("corrupt_policy") else None)


def assemble(*families: dict[str, Claim]) -> dict[str, Claim]:
    """One ordered registry of the families' claims; an id given twice raises."""
    out: dict[str, Claim] = {}
    for family in families:
        for claim in family.values():
            if claim.id in out:
                raise ValueError(f"claim id {claim.id!r} is declared twice; ids must be unique")
            out[claim.id] = claim
    return out


REGISTRY = assemble(claims_rm.REGISTRY, claims_policy.REGISTRY,
                    {i: on_corrupt_labels(claims_policy.REGISTRY[i]) for i in CORRUPT_MIRRORED},
                    claims_m.REGISTRY, claims_warp.REGISTRY)


def compute_claims(workdir: str, data: dict | None = None, **decide_kw) -> list[dict]:
    """Every claim decided on `workdir`'s rows (`data`: what `load(workdir)` already returned)."""
    return E.evaluate(load(workdir) if data is None else data, registry=REGISTRY, **decide_kw)
