"""Deciding WARM's findings: a claims registry, paired seed-aware intervals, three outcomes, and the
curve summaries the claims are declared on. numpy only. The method is docs/evidence.md.

Declare, then decide. Each claim is declared in code before any run (`register`): the statistic,
the unit it is averaged over (pair, prompt or seed), the paper's sign, and for an equivalence claim
its margin δ. Its `compute` turns loaded run data into `Units`: per training seed, the paired
unit-level differences (WA − ENS correctness on the same pair; method A − B control reward on the
same prompt), or one scalar per seed for a seed-level statistic (a curve summary of one run).

Effect. The mean over seeds of each seed's mean difference: seeds weigh equally, whatever their
unit counts, because the seed (labels, RM population, RL) is usually the larger source of variance.

Intervals, both at `level` (default 95 %):
* hierarchical percentile bootstrap: resample the S seeds with replacement, then the units of each
  chosen seed with replacement; the statistic is the mean over resampled seeds of the resampled
  units' mean. Differences are resampled per unit, so the pairing is kept.
* seed-level Student t: mean ± t(S − 1 df) · sd(per-seed means) / √S. Each per-seed mean carries
  its own evaluation noise, so the spread of the S means estimates both sources of variance.

What the intervals cover: training variance (label draw, RM population, best-of-N samples, RL
runs: the seed) and the sampling of evaluation units. In the embedded pipeline every seed is
evaluated on the same validation / test pairs and the same held-out prompts, so the seeds' unit
noise is shared rather than independent: the spread of seed means then under-states the unit
term, which only the within-seed resampling of the bootstrap carries (conditional on that one
evaluation set, at 1,000 pairs or 64-128 prompts per seed). Drawing fresh evaluation units per
seed would make the t-interval cover it too.

Why both. Over few seeds the percentile bootstrap is too narrow: it sees at most C(2S − 1, S) seed
multisets (10 at S = 3), its spread is the plug-in sd (√((S − 1)/S) short) and its quantiles are
normal, not t. For normal seed means, its one-sided error P(T(S − 1) > 1.96 · √((S − 1)/S)) is

    seeds S        2     3     5     10    20    30    50
    one-sided    .199  .125  .077  .048  .036  .032  .029    (nominal .025)

So for 2 ≤ S ≤ UNION_MAX_SEEDS = 30 the decision interval is the union (min of lows, max of highs)
of the two; above 30 seeds the bootstrap alone (its excess error is then under a third of nominal,
and it does not lean on normal seed means). Measured at S = 3 on 1,000 synthetic trials each
(tests/test_evidence.py), a true null came out 'reproduced' with the bootstrap alone / the union in
7.8 % / 2.6 % of trials (pairs, seed spread > evaluation noise) and 14 % / 2.8 % (one number per
seed). The bootstrap is less liberal when evaluation noise dominates, as its within-seed resampling
adds that noise again on top of the seed means that already carry it. One seed cannot estimate
the training variance: the outcome is then 'inconclusive' whatever the interval says. For
unit='seed' claims the bootstrap is over seeds only (each seed holds one number).

Outcomes, for an interval [lo, hi]:
* directional, paper's sign +1 (−1 mirrors): reproduced iff lo > 0, contradicted iff hi < 0, else
  inconclusive. A tie (all differences 0, interval [0, 0]) is therefore never reproduced.
* equivalence with margin δ: reproduced iff −δ < lo and hi < δ; contradicted iff lo ≥ δ or
  hi ≤ −δ; else inconclusive. (A 95 % interval inside ±δ is a TOST at 2.5 % per side.)
* descriptive: reported with its interval, never decided (outcome None); so is a claim whose
  inputs are missing.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import numpy as np

UNITS = ("pair", "prompt", "seed")
KINDS = ("directional", "equivalence", "descriptive")
UNION_MAX_SEEDS = 30      # up to this many seeds, decide on the union with the seed t-interval
_COUNTS_RATIO = 8         # resample by category counts when a seed has ≤ U/8 distinct values
_CHUNK = 1 << 22          # unit indices drawn at once when resampling by index (32 MiB)


@dataclasses.dataclass(frozen=True)
class Units:
    """A claim's data: `per_seed[s]` holds seed s's paired unit-level differences (1-D; lengths may
    differ between seeds) or, for unit='seed' claims, that seed's one number. `extra` numbers are
    copied into the record as they are (keep them JSON-ready)."""
    per_seed: Sequence[Any]
    extra: dict = dataclasses.field(default_factory=dict)
    # a compound ("all of") claim: {part: Units}, each decided on its own and combined by the
    # intersection-union rule (`decide`); per_seed then holds the parts' first (for the effect)
    parts: dict | None = None

    def __post_init__(self):
        arrays = []
        for s, v in enumerate(self.per_seed):
            diffs_U = np.asarray(v, np.float64)
            if diffs_U.ndim > 1:
                raise ValueError(f"Units.per_seed[{s}] has shape {diffs_U.shape}: want 1-D")
            diffs_U = diffs_U.reshape(-1)
            if diffs_U.size == 0:
                raise ValueError(f"Units.per_seed[{s}] is empty: leave the seed out instead")
            if not np.isfinite(diffs_U).all():
                raise ValueError(f"Units.per_seed[{s}] holds NaN or inf: drop those in compute")
            arrays.append(diffs_U)
        object.__setattr__(self, "per_seed", tuple(arrays))


@dataclasses.dataclass(frozen=True)
class Claim:
    """One of WARM's findings, declared before any run (docs/evidence.md, 'Declare, then look')."""
    id: str
    finding: str            # the finding, in words
    paper_ref: str          # where the paper shows it, e.g. "Fig. 4-5"
    statistic: str          # what is averaged, in words
    unit: str               # what it is averaged over: one of UNITS
    kind: str               # one of KINDS
    figure: str             # file stem of the figure it belongs to
    compute: Callable[[Any], Units | None]   # loaded data -> Units, or None when inputs are missing
    direction: int | None = None   # directional only: +1 (paper: effect > 0) or -1
    delta: float | None = None     # equivalence only: the margin δ > 0
    # directional only: False for a statistic biased against the paper's side (a minimum over
    # conditions), whose interval beyond 0 on the other side is not evidence against the paper
    can_contradict: bool = True
    # one of the few headline findings decided with a multiplicity correction (Holm) across all
    # primary claims (`evaluate`); the others are exploratory, decided at the nominal level
    primary: bool = False

    def __post_init__(self):
        where = f"Claim {self.id!r}"
        for name in ("id", "finding", "paper_ref", "statistic", "figure"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: {name} must be a non-empty string, got {value!r}")
        if self.unit not in UNITS:
            raise ValueError(f"{where}: unit={self.unit!r}; allowed {UNITS}")
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind={self.kind!r}; allowed {KINDS}")
        if self.kind == "directional":
            if isinstance(self.direction, bool) or self.direction not in (1, -1):
                raise ValueError(f"{where}: a directional claim needs direction +1 or -1 (the "
                                 f"paper's sign), got {self.direction!r}")
        elif self.direction is not None:
            raise ValueError(f"{where}: direction is for directional claims only; this one is "
                             f"{self.kind!r}, so leave direction None (got {self.direction!r})")
        if self.kind == "equivalence":
            d = self.delta
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d < math.inf:
                raise ValueError(f"{where}: an equivalence claim needs a finite margin delta > 0, "
                                 f"got {d!r}")
        elif self.delta is not None:
            raise ValueError(f"{where}: delta is for equivalence claims only; this one is "
                             f"{self.kind!r}, so leave delta None (got {self.delta!r})")
        if not self.can_contradict and self.kind != "directional":
            raise ValueError(f"{where}: can_contradict=False is for directional claims only")
        if not callable(self.compute):
            raise ValueError(f"{where}: compute must be callable (data -> Units | None), "
                             f"got {self.compute!r}")


REGISTRY: dict[str, Claim] = {}


def register(*, registry: dict[str, Claim] | None = None, **fields) -> Callable:
    """Decorator declaring a claim computed by the decorated function, which it returns unchanged:
    `@register(id=..., finding=..., paper_ref=..., statistic=..., unit=..., kind=..., figure=...,
    direction=...)`. Adds to REGISTRY (or to `registry`); a duplicate id raises."""
    target = REGISTRY if registry is None else registry

    def wrap(compute):
        claim = Claim(compute=compute, **fields)
        if claim.id in target:
            raise ValueError(f"claim id {claim.id!r} is already registered (by "
                             f"{getattr(target[claim.id].compute, '__qualname__', '?')}); "
                             "ids must be unique")
        target[claim.id] = claim
        return compute
    return wrap


def _t_abs_cdf(theta: float, df: int) -> float:
    """P(|T| ≤ √df · tan θ) for integer df ≥ 1 (Abramowitz & Stegun 26.7.3-4)."""
    odd = df % 2 == 1
    j = np.arange(1, (df - 1) // 2 if odd else df // 2)
    ratio = 2 * j / (2 * j + 1) if odd else (2 * j - 1) / (2 * j)
    coef = np.concatenate([[1.0], np.cumprod(ratio)])
    c2 = math.cos(theta) ** 2
    series = float(coef @ c2 ** np.arange(coef.size))
    if odd:
        tail = math.sin(theta) * math.cos(theta) * series if df > 1 else 0.0
        return 2 / math.pi * (theta + tail)
    return math.sin(theta) * series


@functools.lru_cache(maxsize=None)
def t_quantile(p: float, df: int) -> float:
    """Student-t quantile for an integer df ≥ 1 (relative error ~1e-13): bisection on
    θ = atan(t/√df) of the closed-form P(|T| ≤ t) for integer df (Abramowitz & Stegun 26.7.3-4)."""
    if int(df) != df or df < 1 or not 0 < p < 1:
        raise ValueError(f"t_quantile: need 0 < p < 1 and an integer df >= 1, got p={p}, df={df}")
    df = int(df)
    target, lo, hi = abs(2 * p - 1), 0.0, math.pi / 2
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_abs_cdf(mid, df) < target else (lo, mid)
    return math.copysign(math.sqrt(df) * math.tan((lo + hi) / 2), p - 0.5)


def seed_t_interval(means_S: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval on S ≥ 2 per-seed means, S − 1 degrees of freedom."""
    means_S = np.asarray(means_S, np.float64)
    S = means_S.size
    if S < 2:
        raise ValueError(f"seed_t_interval needs >= 2 seeds, got {S}")
    half = t_quantile(0.5 + level / 2, S - 1) * means_S.std(ddof=1) / math.sqrt(S)
    return float(means_S.mean() - half), float(means_S.mean() + half)


def hierarchical_bootstrap(per_seed: Sequence[np.ndarray], *, rng: np.random.Generator,
                           n_boot: int) -> np.ndarray:
    """`n_boot` replicates of: resample the seeds with replacement, resample each chosen seed's
    units with replacement, average the units within a seed, then over seeds. Returns stats_B."""
    S = len(per_seed)
    seed_BxS = rng.integers(0, S, (n_boot, S))
    means_BxS = np.empty((n_boot, S))
    for j, diffs_U in enumerate(per_seed):   # a loop over seeds; the replicates are vectorised
        chosen_BxS = seed_BxS == j
        means_BxS[chosen_BxS] = _resampled_means(diffs_U, int(chosen_BxS.sum()), rng)
    return means_BxS.mean(1)


def _resampled_means(diffs_U: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """m means of with-replacement resamples of diffs_U. When few values are distinct (a paired
    correctness difference takes three) the resample's category counts are drawn as one multinomial,
    the same distribution as drawing U indices at O(distinct) rather than O(U) cost."""
    U = diffs_U.size
    values_K, counts_K = np.unique(diffs_U, return_counts=True)
    if values_K.size * _COUNTS_RATIO <= U:
        return rng.multinomial(U, counts_K / U, size=m) @ values_K / U
    means_m, step = np.empty(m), max(1, _CHUNK // U)
    for start in range(0, m, step):
        k = min(step, m - start)
        means_m[start:start + k] = diffs_U[rng.integers(0, U, (k, U))].mean(1)
    return means_m


def _outcome(claim: Claim, lo: float, hi: float, n_seeds: int) -> tuple[str | None, str]:
    if claim.kind == "descriptive":
        return None, "descriptive claim: reported with its interval, not decided"
    if n_seeds == 1:
        return "inconclusive", ("one seed: the training (seed) variance cannot be estimated, so "
                                "no interval covers it; run at least 3 seeds")
    if claim.kind == "directional":
        agree, disagree = (lo > 0, hi < 0) if claim.direction > 0 else (hi < 0, lo > 0)
        if agree:
            return "reproduced", "the interval lies on the paper's side of 0"
        if disagree and not claim.can_contradict:
            return "inconclusive", ("the interval lies on the other side of 0, but this statistic "
                                    "is biased against the paper's side, so it cannot contradict")
        if disagree:
            return "contradicted", "the interval lies on the other side of 0 from the paper"
        return "inconclusive", "the interval contains 0"
    if -claim.delta < lo and hi < claim.delta:
        return "reproduced", "the interval lies inside (-delta, +delta)"
    if lo >= claim.delta or hi <= -claim.delta:
        return "contradicted", "the interval lies wholly outside (-delta, +delta)"
    return "inconclusive", "the interval straddles +delta or -delta"


def _rule(claim: Claim, n_seeds: int, n_boot: int, level: float, union: bool) -> str:
    pct = f"{100 * level:g}%"
    if claim.kind == "directional":
        side, other = ("above", "below") if claim.direction > 0 else ("below", "above")
        test = (f"reproduced iff the {pct} interval lies wholly {side} 0 (the paper's sign), "
                + (f"contradicted iff wholly {other} 0, " if claim.can_contradict else
                   "never contradicted (the statistic is biased against the paper's side), ")
                + "else inconclusive (a tie is inconclusive)")
    elif claim.kind == "equivalence":
        d = f"{claim.delta:g}"
        test = (f"reproduced iff the {pct} interval lies inside (-{d}, +{d}), contradicted iff "
                f"wholly outside it (lo >= {d} or hi <= -{d}), else inconclusive")
    else:
        test = f"descriptive: the {pct} interval is reported, not decided"
    boot = (f"a percentile bootstrap over seeds ({n_boot} replicates)" if claim.unit == "seed" else
            f"a paired hierarchical percentile bootstrap ({n_boot} replicates: seeds with "
            f"replacement, then {claim.unit}s within each chosen seed)")
    if union:
        how = (f"the union of {boot} and a Student-t interval on the {n_seeds} per-seed means "
               f"({n_seeds - 1} df), since a percentile bootstrap over <= {UNION_MAX_SEEDS} seeds "
               "is too narrow")
    elif n_seeds == 1:
        how = f"{boot}; with one seed no t-interval exists and the outcome is inconclusive"
    else:
        how = f"{boot} alone (more than {UNION_MAX_SEEDS} seeds)"
    return f"{test}. Interval: {how}."


def _seeds_needed(claim: Claim, effect: float, sd_S: float, level: float) -> int | None:
    """Seeds at which the t-interval's half-width would fit the current effect (directional) or
    the room left inside ±delta (equivalence), if the measured effect and spread held."""
    room = abs(effect) if claim.kind == "directional" else (claim.delta or 0) - abs(effect)
    if claim.kind == "descriptive" or room <= 0 or not sd_S > 0:
        return None
    fits = lambda s: t_quantile(0.5 + level / 2, s - 1) * sd_S / math.sqrt(s) < room  # noqa: E731
    lo, hi = 1, 2
    while not fits(hi):
        if hi >= 4096:
            return None
        lo, hi = hi, 2 * hi
    while hi - lo > 1:   # fits(hi) and not fits(lo): bisect on the seed count
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def _json_float(x) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _interval(stats_B: np.ndarray, means_S: np.ndarray, level: float) -> tuple:
    """(ci_bootstrap, ci_t, decision interval, union?) at `level`."""
    S = means_S.size
    ci_boot = [float(q) for q in np.quantile(stats_B, [(1 - level) / 2, (1 + level) / 2])]
    ci_t = list(seed_t_interval(means_S, level)) if S >= 2 else None
    union = ci_t is not None and S <= UNION_MAX_SEEDS
    lo, hi = (min(ci_boot[0], ci_t[0]), max(ci_boot[1], ci_t[1])) if union else tuple(ci_boot)
    return ci_boot, ci_t, (lo, hi), union


def _q_at(sorted_B: np.ndarray, x: float, upper: bool) -> float:
    """Where `np.quantile(sorted_B, q)` (linear interpolation) reaches x: with `upper` the largest
    q at which it is still <= x, else the smallest q at which it is >= x (the two differ only
    where replicates tie at x). The interval's low end at level L lies above x iff
    (1 − L)/2 > q_at(x, upper=True); its high end lies below x iff (1 + L)/2 < q_at(x, False)."""
    n = sorted_B.size
    if x < sorted_B[0] or (not upper and x == sorted_B[0]):
        return 0.0
    if x > sorted_B[-1] or (upper and x == sorted_B[-1]):
        return 1.0
    if n == 1:
        return 0.0 if not upper else 1.0
    lo = int(np.searchsorted(sorted_B, x, side="left"))
    hi = int(np.searchsorted(sorted_B, x, side="right"))
    if lo < hi:   # replicates equal to x: indices lo .. hi − 1
        return (hi - 1 if upper else lo) / (n - 1)
    k = lo - 1    # sorted_B[k] < x < sorted_B[k + 1]
    return (k + (x - sorted_B[k]) / (sorted_B[k + 1] - sorted_B[k])) / (n - 1)


def _p_value(claim: Claim, stats_B, means_S, outcome: str) -> float:
    """The smallest 1 − level at which the decision interval gives `outcome` (two-sided
    convention: the nominal 95% decision is p < 0.05), in closed form: an interval's low end
    lies above x at level L iff 1 − L exceeds the p-value of 'above x' (bootstrap: twice the
    replicates' interpolated rank of x; t: the two-sided t-test of mean = x), and the union's iff
    both do."""
    S = means_S.size
    if S < 2 or claim.kind == "descriptive":
        return 1.0
    sorted_B = np.sort(stats_B)
    union = S <= UNION_MAX_SEEDS
    mean, se = float(means_S.mean()), float(means_S.std(ddof=1)) / math.sqrt(S)

    def t_p(z):   # two-sided p of a t statistic z >= 0 with S − 1 df
        return 1.0 - _t_abs_cdf(math.atan(z / math.sqrt(S - 1)), S - 1) if z > 0 else 1.0

    def above(x):   # p-value of "interval wholly above x"
        p = min(1.0, 2 * _q_at(sorted_B, x, upper=True))
        if union:
            pt = (t_p((mean - x) / se) if se > 0 else (0.0 if mean > x else 1.0))
            p = max(p, pt)
        return p

    def below(x):
        p = min(1.0, 2 * (1 - _q_at(sorted_B, x, upper=False)))
        if union:
            pt = (t_p((x - mean) / se) if se > 0 else (0.0 if mean < x else 1.0))
            p = max(p, pt)
        return p
    if claim.kind == "directional":
        agree, disagree = (above, below) if claim.direction > 0 else (below, above)
        return agree(0.0) if outcome == "reproduced" else disagree(0.0)
    d = claim.delta
    if outcome == "reproduced":
        return max(above(-d), below(d))
    return min(above(d), below(-d))


def _decide_units(claim: Claim, units: Units, *, rng_seed: int, n_boot: int,
                  level: float) -> dict:
    per_seed = units.per_seed
    if claim.unit == "seed" and any(v.size != 1 for v in per_seed):
        raise ValueError(f"claim {claim.id!r} is unit='seed': give one number per seed, got "
                         f"{[v.size for v in per_seed]} values")
    S = len(per_seed)
    means_S = np.array([v.mean() for v in per_seed])
    effect = float(means_S.mean())
    rng = np.random.default_rng(rng_seed)
    stats_B = hierarchical_bootstrap(per_seed, rng=rng, n_boot=n_boot)
    ci_boot, ci_t, (lo, hi), union = _interval(stats_B, means_S, level)
    outcome, reason = _outcome(claim, lo, hi, S)
    sd_S = float(means_S.std(ddof=1)) if S >= 2 else None
    # evaluation noise of one seed mean: where it is most of sd_seed_means, add units, not seeds
    se_within = math.sqrt(np.mean([v.var(ddof=1) / v.size if v.size > 1 else 0 for v in per_seed]))
    boot_name = "seed_bootstrap" if claim.unit == "seed" else "hierarchical_bootstrap"
    decidable = claim.kind != "descriptive"
    return {"outcome": outcome, "reason": reason, "effect": effect, "ci": [lo, hi],
            "ci_bootstrap": ci_boot, "ci_t": ci_t, "per_seed": means_S.tolist(), "n_seeds": S,
            "n_units": int(sum(v.size for v in per_seed)),
            "interval": f"union({boot_name}, seed_t)" if union else boot_name,
            "rule": _rule(claim, S, n_boot, level, union),
            "p_reproduced": _p_value(claim, stats_B, means_S, "reproduced") if decidable else None,
            "p_contradicted": (_p_value(claim, stats_B, means_S, "contradicted")
                               if decidable and claim.can_contradict else None),
            "variance": {"sd_seed_means": _json_float(sd_S),
                         "se_within_seed": None if claim.unit == "seed" else se_within},
            "seeds_needed": (_seeds_needed(claim, effect, sd_S, level)
                             if outcome == "inconclusive" and sd_S is not None else None)}


def decide(claim: Claim, units: Units | None, *, rng_seed: int = 0, n_boot: int = 2000,
           level: float = 0.95) -> dict:
    """A JSON-ready record of one claim: the declaration, then outcome and reason, effect, ci (the
    decision interval), ci_bootstrap, ci_t, per_seed means, n_seeds, n_units, interval, rule,
    p_reproduced / p_contradicted (the smallest 1 − level at which the interval gives that
    outcome), variance, seeds_needed (if inconclusive: at the measured effect and spread) and
    extra. A compound claim (`Units.parts`) decides each part and combines them by the
    intersection-union rule: reproduced iff every part is, contradicted iff some part is (its
    p-values: the largest part's p_reproduced, the smallest part's p_contradicted); its top-level
    numbers are those of the part with the largest p_reproduced, the one that binds."""
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"decide: need 0 < level < 1 and n_boot >= 1, got {level}, {n_boot}")
    record = {"claim": claim.id, "finding": claim.finding, "paper_ref": claim.paper_ref,
              "statistic": claim.statistic, "unit": claim.unit, "kind": claim.kind,
              "direction": claim.direction, "delta": claim.delta, "figure": claim.figure,
              "primary": claim.primary, "level": level, "n_boot": n_boot, "rng_seed": rng_seed}
    if units is None or not units.per_seed:
        return {**record, "outcome": None, "reason": "inputs missing", "effect": None, "ci": None,
                "ci_bootstrap": None, "ci_t": None, "per_seed": [], "n_seeds": 0, "n_units": 0,
                "interval": None, "rule": "inputs missing: nothing to decide",
                "p_reproduced": None, "p_contradicted": None, "variance": None,
                "seeds_needed": None, "extra": dict(units.extra) if units else {}}
    kw = dict(rng_seed=rng_seed, n_boot=n_boot, level=level)
    if not units.parts:
        return {**record, **_decide_units(claim, units, **kw), "extra": dict(units.extra)}
    parts = {name: _decide_units(claim, u, **kw) for name, u in units.parts.items()}
    binding = max(parts, key=lambda n: parts[n]["p_reproduced"])
    p_rep = parts[binding]["p_reproduced"]
    p_cons = {n: p["p_contradicted"] for n, p in parts.items() if p["p_contradicted"] is not None}
    # contradicted when some part is: a union over the k parts, so Bonferroni on that side
    p_con = min(1.0, len(parts) * min(p_cons.values())) if p_cons else None
    n_seeds = parts[binding]["n_seeds"]
    if n_seeds < 2 or claim.kind == "descriptive":
        outcome, reason = parts[binding]["outcome"], parts[binding]["reason"]
    elif p_rep < 1 - level:
        outcome, reason = "reproduced", "every part's interval lies on the paper's side"
    elif p_con is not None and p_con < 1 - level:
        worst = min(p_cons, key=p_cons.get)
        outcome = "contradicted"
        reason = (f"part {worst!r} lies on the other side at level 1 − (1 − {level:g})/"
                  f"{len(parts)} (Bonferroni over the parts)")
    else:
        outcome, reason = "inconclusive", f"part {binding!r} is not reproduced"
    if outcome == "contradicted":   # the numbers shown are those of the part that decides
        binding = min(p_cons, key=p_cons.get)
    needs = [p["seeds_needed"] for p in parts.values()]
    top = dict(parts[binding])
    top.update(outcome=outcome, reason=reason, p_reproduced=p_rep, p_contradicted=p_con,
               ci=parts[binding]["ci"] if outcome != "contradicted" else _bonferroni_ci(
                   claim, units.parts[binding], len(parts), **kw),
               rule=(f"all of {list(parts)} (intersection-union: reproduced iff every part's "
                     f"interval is; contradicted iff some part's interval at level "
                     f"1 − (1 − level)/{len(parts)} lies on the other side): " + top["rule"]),
               seeds_needed=(max(needs) if outcome == "inconclusive" and None not in needs
                             else None))
    return {**record, **top, "binding_part": binding,
            "parts": {n: {k: p[k] for k in ("outcome", "effect", "ci", "per_seed",
                                             "p_reproduced", "p_contradicted")}
                      for n, p in parts.items()},
            "extra": dict(units.extra)}


def _bonferroni_ci(claim, units, k, *, rng_seed, n_boot, level):
    """A part's decision interval at level 1 − (1 − level)/k (what contradicts a compound)."""
    return _decide_units(claim, units, rng_seed=rng_seed, n_boot=n_boot,
                         level=1 - (1 - level) / k)["ci"]


def holm(records: list[dict], alpha: float = 0.05) -> list[dict]:
    """Holm's step-down correction over the primary claims that have an outcome: each such claim
    is tested on its smaller p-value (reproduced or contradicted), and keeps that outcome only if
    its Holm-adjusted p-value is below `alpha`; otherwise it is inconclusive. The unadjusted
    outcome stays in `outcome_unadjusted`. Exploratory records are returned unchanged."""
    family = [r for r in records if r.get("primary") and r["outcome"] is not None]
    tests = []
    for r in family:
        p_rep, p_con = r["p_reproduced"], r["p_contradicted"]
        side = "contradicted" if p_con is not None and p_con < p_rep else "reproduced"
        tests.append((min(p_rep, p_con) if p_con is not None else p_rep, side, r))
    tests.sort(key=lambda t: t[0])
    m, running = len(tests), 0.0
    out = {}
    for i, (p, side, r) in enumerate(tests):
        running = max(running, min(1.0, (m - i) * p))
        outcome = side if running < alpha else "inconclusive"
        reason = (f"Holm over {m} primary claims: adjusted p = {running:.3g} for '{side}'"
                  + ("" if outcome == side else f", not below {alpha}"))
        out[id(r)] = {**r, "outcome_unadjusted": r["outcome"], "outcome": outcome,
                      "reason": reason,
                      "multiplicity": {"method": "holm", "family": m, "p": p, "side": side,
                                       "p_adjusted": running, "alpha": alpha}}
    return [out.get(id(r), r) for r in records]


def chance_decisions(records: list[dict]) -> float:
    """How many of the exploratory records' decisions chance alone would give, in expectation:
    the sum of their nominal false-decision rates over those with two or more seeds (5% for a
    directional or equivalence claim: 2.5% each way; 2.5% for one that cannot contradict). The
    claims are strongly dependent (mirrors, shared runs): the count has a large variance."""
    rate = 0.0
    for r in records:
        if (r.get("primary") or r["outcome"] is None or r["kind"] == "descriptive"
                or r.get("n_seeds", 0) < 2):
            continue
        rate += 0.025 if r.get("p_contradicted") is None else 0.05
    return rate


def evaluate(data: Any, *, registry: dict[str, Claim] | None = None, **decide_kw) -> list[dict]:
    """Every registered claim computed on `data` and decided, in registration order; the primary
    ones with Holm's correction across them (`holm`)."""
    claims = REGISTRY if registry is None else registry
    return holm([decide(c, c.compute(data), **decide_kw) for c in claims.values()],
                alpha=1 - decide_kw.get("level", 0.95))


# ----------------------------------------------------------------------------------------------
# Curve summaries (docs/evidence.md, 'Curves, not points'): what curve claims are decided on.


def bon_unbiased(proxy_PxK: np.ndarray, control_PxK: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """control_PxN: per prompt, the exact expected control reward of the highest-proxy response
    among n drawn uniformly without replacement from its K, for each n in `ns`. Sorted by proxy, the
    i-th smallest (i from 1) is the subset's best with probability C(i-1, n-1)/C(K, n) (in log
    space: K = 256 does not overflow). Proxy ties are broken uniformly at random: tied responses
    share their mean control, exactly the expectation over tie orders (unlike the first-index rule
    of warm_jax.rl.bon it does not depend on storage order; both are unbiased)."""
    proxy_PxK, control_PxK = np.asarray(proxy_PxK, np.float64), np.asarray(control_PxK, np.float64)
    if proxy_PxK.ndim != 2 or proxy_PxK.shape != control_PxK.shape:
        raise ValueError(f"bon_unbiased: want two (prompts, K) arrays of one shape, got "
                         f"{proxy_PxK.shape} and {control_PxK.shape}")
    if np.isnan(proxy_PxK).any():
        raise ValueError("bon_unbiased: proxy rewards hold NaN")
    P, K = proxy_PxK.shape
    n_N = np.asarray(ns).reshape(-1)
    if n_N.size == 0 or not np.all((n_N >= 1) & (n_N <= K) & (n_N == np.round(n_N))):
        raise ValueError(f"bon_unbiased: each n must be an integer in [1, K={K}], got {list(ns)}")
    n_N = n_N.astype(np.int64)
    order_PxK = np.argsort(proxy_PxK, axis=1, kind="stable")
    proxy_PxK = np.take_along_axis(proxy_PxK, order_PxK, 1)
    control_PxK = np.take_along_axis(control_PxK, order_PxK, 1)
    starts_PxK = np.ones((P, K), bool)
    starts_PxK[:, 1:] = proxy_PxK[:, 1:] != proxy_PxK[:, :-1]
    group_PxK = np.cumsum(starts_PxK, 1) - 1 + K * np.arange(P)[:, None]   # tie groups, global ids
    sums = np.bincount(group_PxK.ravel(), control_PxK.ravel(), P * K)
    sizes = np.bincount(group_PxK.ravel(), minlength=P * K)
    control_PxK = (sums / np.maximum(sizes, 1))[group_PxK]
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, K + 1)))])
    log_comb = lambda a, b: log_fact[a] - log_fact[b] - log_fact[a - b]   # noqa: E731
    rank_K, n_Nx1 = np.arange(1, K + 1), n_N[:, None]
    best_NxK = rank_K >= n_Nx1    # a response ranked below n can never be a subset's best
    log_w_NxK = log_comb(np.maximum(rank_K - 1, n_Nx1 - 1), n_Nx1 - 1) - log_comb(K, n_Nx1)
    return control_PxK @ np.where(best_NxK, np.exp(log_w_NxK), 0.0).T


def auc_log2(ns: Sequence[float], curve_N: np.ndarray) -> np.ndarray | float:
    """Mean gain of a curve over log2 n: the trapezoid area under curve(n) − curve(1) against
    log2 n, divided by log2(max n). `ns` increase from 1; curve_N may have leading axes (seeds)."""
    x_N = np.log2(np.asarray(ns, np.float64))
    curve_N = np.asarray(curve_N, np.float64)
    if x_N.ndim != 1 or x_N.size < 2 or x_N[0] != 0 or not np.all(np.diff(x_N) > 0):
        raise ValueError(f"auc_log2: ns must increase strictly from 1, got {list(ns)}")
    if curve_N.shape[-1:] != x_N.shape:
        raise ValueError(f"auc_log2: curve's last axis {curve_N.shape} must match {x_N.size} ns")
    gain_N = curve_N - curve_N[..., :1]
    area = ((gain_N[..., 1:] + gain_N[..., :-1]) / 2 * np.diff(x_N)).sum(-1)
    return area / x_N[-1]


def value_at_kl(kl_E: np.ndarray, value_E: np.ndarray, budgets: Sequence[float]) -> np.ndarray:
    """A metric at declared KL budgets, from held-out evaluations e = 0..E-1 in training order: the
    value when the policy FIRST reached each KL, linearly interpolated. KL along RL need not grow
    monotonically; an evaluation whose KL does not exceed every earlier one is dropped (it sits at a
    KL already passed), which leaves a strictly increasing x-axis (the running max of KL). NaN for
    budgets below the first evaluation's KL or beyond the largest KL reached."""
    kl_E, value_E = np.asarray(kl_E, np.float64), np.asarray(value_E, np.float64)
    if kl_E.ndim != 1 or kl_E.shape != value_E.shape or kl_E.size == 0:
        raise ValueError(f"value_at_kl: want two 1-D arrays of one length, got {kl_E.shape} and "
                         f"{value_E.shape}")
    if not np.isfinite(kl_E).all():
        raise ValueError("value_at_kl: KL holds NaN or inf")
    new_max_E = np.concatenate([[True], kl_E[1:] > np.maximum.accumulate(kl_E)[:-1]])
    return np.interp(np.asarray(budgets, np.float64), kl_E[new_max_E], value_E[new_max_E],
                     left=np.nan, right=np.nan)
