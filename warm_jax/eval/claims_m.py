"""WARM beyond M = 6 (the paper trains 10 members, averages the best M on held-out accuracy): does
M = 10, the four weakest members included, delay reward hacking without raising the peak? Assembled
into `warm_jax.eval.claims.REGISTRY` after the best-of-N and RL claims. Both claims compare the run's largest WARM past the pinned
one (`beyond_warm`: FULL=1's warm_M10) with the pinned one (`main_warm`: warm_M6) in RL against the
clean-label reward models, at the α both ran at; without such a run they have no inputs."""
from __future__ import annotations

import collections

import numpy as np

from warm_jax.eval.claim_data import (HACK_MARGIN, best_step, beyond_warm, eval_runs, fall_at_kl,
                                      halves, main_warm, prompt_means, reach, seed_units)
from warm_jax.eval.evidence import register

# Equivalence margin of `m10_same_peak`, declared before any FULL=1 run with M = 10: a difference of
# peaks smaller than the fall that counts as hacking (HACK_MARGIN, in held-out control reward) is
# below what the claims call a change of the curve at all.
PEAK_DELTA = HACK_MARGIN


REGISTRY: dict = {}   # assembled in order by warm_jax.eval.claims


def m_pair(d) -> tuple[str, str] | tuple[None, None]:
    """(the larger WARM, the pinned WARM) of the RL runs, or (None, None)."""
    big, main = beyond_warm(d["eval"]), main_warm(d["eval"])
    return (big, main) if big and main else (None, None)


def _shared_runs(d, a, b) -> tuple[dict, dict, list]:
    """Both methods' held-out evaluations and the (α, seed) runs they share, checked finished."""
    A, B = eval_runs(d, a), eval_runs(d, b)
    keys = sorted(set(A) & set(B))
    for k in keys:
        if [r["step"] for r in A[k]] != [r["step"] for r in B[k]]:
            raise ValueError(f"{a} and {b} at α={k[0]}, seed {k[1]} were evaluated at different "
                             f"steps ({A[k][-1]['step']} vs {B[k][-1]['step']}): unfinished run?")
    return A, B, keys


def _gaps(d, gap):
    """(larger WARM, pinned WARM, shared (α, seed) runs, {seed: [gap(its rows, pinned's rows)
    per shared run]}), or None without the pair."""
    big, main = m_pair(d)
    if big is None:
        return None
    A, B, keys = _shared_runs(d, big, main)
    per_seed = collections.defaultdict(list)
    for k in keys:
        per_seed[k[1]].append(gap(A[k], B[k]))
    return big, main, keys, per_seed


def hacking_step(rows, margin: float = HACK_MARGIN) -> tuple[int, float, bool]:
    """(step, KL, hacked): the first evaluation at which the held-out control reward is more than
    `margin` below its running peak (over the evaluations so far, step 0 included). A run that
    never falls that far is censored at its last evaluation (hacked False)."""
    peak = -np.inf
    for r in rows:
        peak = max(peak, r["control_reward"])
        if r["control_reward"] < peak - margin:
            return int(r["step"]), float(r["kl"]), True
    return int(rows[-1]["step"]), float(rows[-1]["kl"]), False


def m_summary(d) -> dict | None:
    """Per method of `m_pair`, per (α, seed) both ran: peak and final held-out control reward, and
    the step and KL of hacking (`hacking_step`, censored at the last step). None without the pair."""
    big, main = m_pair(d)
    if big is None:
        return None
    A, B, keys = _shared_runs(d, big, main)
    if not keys:
        return None
    out = {}
    for m, runs in ((main, B), (big, A)):
        out[m] = []
        for k in keys:
            rows = runs[k]
            step, kl, hacked = hacking_step(rows)
            out[m].append({"alpha": k[0], "seed": k[1],
                           "peak": max(r["control_reward"] for r in rows),
                           "final": rows[-1]["control_reward"], "hack_step": step,
                           "hack_kl": kl, "hacked": hacked})
    return out


@register(registry=REGISTRY, id="m10_delays_hacking", paper_ref="WARM §5 (M = 10)",
          finding="WARM with M = 10 (the four weakest of ten members included) reduces reward "
                  "hacking relative to WARM M = 6: at the same KL its policy has fallen less "
                  "from its peak", figure="m10",
          statistic="per judged prompt, fall of the WARM M=6 policy − fall of the WARM M=10 policy "
                    "(the run's largest M past 6), each at the smaller of the two runs' largest KL, "
                    "a fall being held-out control reward at the run's peak among its evaluations "
                    "up to that KL (chosen on the other half of the prompts) − where it first "
                    "reaches that KL (same α, seed and prompt), mean over the α both ran at; "
                    "each run's step "
                    f"of hacking (first fall of more than {HACK_MARGIN} below the running peak, "
                    "censored at the last step) is in extra",
          unit="prompt", kind="directional", direction=+1)
def m10_delays_hacking(d):
    def gap(a, b):
        cap = min(reach(a), reach(b))
        return fall_at_kl(b, cap) - fall_at_kl(a, cap)
    got = _gaps(d, gap)
    if got is None:
        return None
    big, main, keys, per_seed = got
    summary = m_summary(d) or {}
    hack = {m: {f"alpha={r['alpha']},seed={r['seed']}": (r["hack_step"] if r["hacked"] else None)
                for r in rows} for m, rows in summary.items()}
    return seed_units(prompt_means(per_seed), a=big, b=main, alphas=sorted({k[0] for k in keys}),
                  hack_step=hack)


@register(registry=REGISTRY, id="m10_same_peak", paper_ref="WARM §5 (M = 10)",
          finding="WARM with M = 10 does not raise the peak control reward of RL over WARM M = 6",
          figure="m10",
          statistic="per judged prompt, held-out control reward at each policy's peak RL step "
                    "(chosen on the other half of the held-out prompts), WARM M=10 − WARM M=6 "
                    "(same α, seed and prompt), mean over the α both ran at",
          unit="prompt", kind="equivalence", delta=PEAK_DELTA)
def m10_same_peak(d):
    def gap(a, b):
        select, judged = halves(a)
        peaks = []
        for rows in (a, b):
            trained = [r for r in rows if r["step"] > 0] or rows   # the peak is an RL step
            peaks.append(np.asarray(best_step(trained, select)["gold_per_prompt"][judged]))
        return peaks[0] - peaks[1]
    got = _gaps(d, gap)
    if got is None:
        return None
    big, main, keys, per_seed = got
    return seed_units(prompt_means(per_seed), a=big, b=main, alphas=sorted({k[0] for k in keys}))
