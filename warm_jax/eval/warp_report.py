"""The report's WARP section and figure, from the rows `claims_warp` reads: per reward
method and iteration, every point's KL to the SFT policy and held-out control reward (mean ± sd over
chain seeds), and the 2×2 {single RM, WARM} × {RL, WARP} at the KL budgets. Descriptive: the
decided comparisons are the `warp_*` claims."""
from __future__ import annotations

import collections

import numpy as np

from warm_jax.eval.claim_data import KL_BUDGETS
from warm_jax.eval.claims_warp import cells, front, safe_kl, warp_runs


def _ms(values) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not v.size:
        return "–"
    return f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if v.size > 1 else "")


def _points(per) -> dict:
    """{iteration: [(label, [rows over seeds (and policies)])]} in the table's order."""
    out = collections.defaultdict(list)
    for it in sorted({i for s in per.values() for i in s["liti"]}):
        along = [rows for s in per.values() for (i, _), rows in s["along"].items() if i == it]
        out[it].append((f"policies at step {along[0][0]['step']}", [r[0] for r in along]))
        out[it].append((f"policies at step {along[0][-1]['step']} (EMA anchor)",
                        [r[-1] for r in along]))
        etas = sorted({r["eta"] for s in per.values() for r in s["liti"][it]})
        for eta in etas:
            out[it].append((f"LITI η = {eta:g} (SLERP)", [r for s in per.values()
                                                         for r in s["liti"][it] if r["eta"] == eta]))
        out[it].append(("LERP (η = 1)", [s["lerp"][it] for s in per.values() if it in s["lerp"]]))
    return out


def warp_section(d: dict, cost_s: float | None = None) -> list[str]:
    W = warp_runs(d)
    if not W:
        return []
    seeds = sorted({s for per in W.values() for s in per})
    lines = ["## WARP: averaging the policies", "",
             f"Per reward method and iteration: the WARP policies (EMA anchor) at their first and "
             f"last evaluation, the LITI points from the iteration's init to the SLERP of its "
             f"policies, and LERP. KL to the SFT policy and control reward on the held-out "
             f"prompts, mean ± sd over chain seeds {seeds} (the policies' rows: over seeds and "
             f"policies). The decided comparisons are the `warp_*` claims above."
             + (f" Stage wall time {cost_s:.0f} s." if cost_s else ""), ""]
    for method, per in sorted(W.items()):
        for it, pts in _points(per).items():
            lines += [f"**{method}, iteration {it}**", "", "| point | KL to SFT | control reward |",
                      "|---|---|---|"]
            lines += [f"| {label} | {_ms([r['kl'] for r in rows])} | "
                      f"{_ms([r['control_reward'] for r in rows])} |" for label, rows in pts]
            lines.append("")
    c = cells(d)
    if c:
        lines += ["**The 2×2** (WARP: its path from the SFT policy over the iterations; RL: the RL "
                  "stage's run at WARP's α). Control reward where each curve first reaches a KL "
                  "budget (– where a seed's curve does not reach it; mean ± sd over seeds), and "
                  "the safe KL: the largest KL before the control reward falls more than the "
                  "hacking margin below its running peak (peak picked on one half of the prompts, "
                  "the fall judged on the other; censored at the largest KL reached; how many "
                  "curves fell in brackets). Uncapped here: `warp_2x2_safe_kl` caps each "
                  "comparison at the shorter curve's reach.", "",
                  "| reward | optimiser | " + " | ".join(f"KL {b:g}" for b in KL_BUDGETS)
                  + " | largest KL within the margin |",
                  "|---|---|" + "---|" * (len(KL_BUDGETS) + 1)]
        for (reward, opt), curves in sorted(c.items()):
            fronts = np.array([front(rows, KL_BUDGETS) for rows in curves.values()])
            at = [_ms(fronts[:, i]) if np.isfinite(fronts[:, i]).all() else "–"
                  for i in range(len(KL_BUDGETS))]
            safe = [safe_kl(rows) for rows in curves.values()]
            lines.append(f"| {reward} | {opt} | " + " | ".join(at) + f" | "
                         f"{_ms([k for k, _ in safe])} ({sum(h for _, h in safe)} of "
                         f"{len(safe)} hacked) |")
        lines.append("")
    return lines


def _mean_curve(curves):
    n = min(len(c) for c in curves)
    return (np.mean([[r["kl"] for r in c[:n]] for c in curves], 0),
            np.mean([[r["control_reward"] for r in c[:n]] for c in curves], 0))


def warp_curves(d: dict) -> dict[str, dict]:
    """What fig_warp draws, per WARP reward method: {"rl": (KL, control reward) of the RL stage's
    runs or None, "along": the WARP policies along iteration 1, "liti": {iteration: (KL, control
    reward, η)}, "lerp": {iteration: (KL, control reward)}}, each a mean over chain seeds (the
    policies: over seeds and policies)."""
    c = cells(d)
    out = {}
    for method, per in sorted(warp_runs(d).items()):
        along = [rows for s in per.values() for (i, _), rows in s["along"].items() if i == 1]
        its = sorted({i for s in per.values() for i in s["liti"]})
        liti, lerp = {}, {}
        for it in its:
            fronts = [s["liti"][it] for s in per.values()]
            n = min(len(f) for f in fronts)
            liti[it] = (*_mean_curve(fronts), np.array([r["eta"] for r in fronts[0][:n]]))
            rows = [s["lerp"][it] for s in per.values() if it in s["lerp"]]
            if rows:
                lerp[it] = (float(np.mean([r["kl"] for r in rows])),
                            float(np.mean([r["control_reward"] for r in rows])))
        out[method] = {"rl": _mean_curve(list(c[(method, "RL")].values()))
                       if (method, "RL") in c else None,
                       "along": _mean_curve(along), "liti": liti, "lerp": lerp}
    return out


def fig_warp(d: dict, path: str):
    """Control reward against KL to SFT, one panel per WARP reward method (`warp_curves`)."""
    from warm_jax.eval.figures import COLORS, plt, save_figure   # matplotlib only when drawing
    curves = warp_curves(d)
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 3.6), squeeze=False)
    for ax, (method, cv) in zip(axes[0], curves.items()):
        color = COLORS.get(method, "k")
        if cv["rl"] is not None:
            ax.plot(*cv["rl"], "-", color="grey", lw=1.5, label="RL, SFT anchor (steps)")
        ax.plot(*cv["along"], "--", color=color, lw=1.2, label="WARP policies, EMA anchor (it. 1)")
        for it, (kl, cr, _) in cv["liti"].items():
            ax.plot(kl, cr, "o-", ms=3, lw=1.8, alpha=0.5 + 0.5 / it, color=color,
                    label=f"LITI front, iteration {it}")
            if it in cv["lerp"]:
                ax.plot(*([v] for v in cv["lerp"][it]), "s", color="k", ms=4,
                        label="LERP (η = 1)" if it == 1 else None)
        ax.set_title(f"WARP against {method}")
        ax.set_xlabel("KL to the SFT policy (held-out)")
    axes[0][0].set_ylabel("held-out control reward")
    axes[0][0].legend(fontsize=6)
    return save_figure(fig, path)
