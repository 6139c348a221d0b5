"""The report's figures, each from a run's JSONL rows (`warm_jax.eval.claims.load`), one thin line
or dot per chain seed. Each returns the file name it wrote, or None when the run has no rows for it.
"""
from __future__ import annotations

import collections
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from warm_jax.eval.claim_data import corruption_accuracy, ood_split  # noqa: E402
from warm_jax.eval.evidence import seed_t_interval, value_at_kl  # noqa: E402
from warm_jax.eval.metrics import gao_curve, gao_fit  # noqa: E402
from warm_jax.fileio import atomic_write  # noqa: E402

# one colour per method in every figure: the Okabe-Ito colour-blind-safe palette
COLORS = {"single": "#D55E00", "warm_M2": "#56B4E9", "warm_M6": "#0072B2", "warm_M10": "#000000",
          "ens": "#E69F00", "ens_M2": "#009E73", "wco": "#CC79A7", "uwo": "#999999",
          "greedy": "#F0E442"}
DPI = 150


def save_figure(fig, path):
    """`path` (PNG, DPI dots per inch) and the same figure as PDF beside it."""
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, format="png", bbox_inches="tight"))
    atomic_write(os.path.splitext(path)[0] + ".pdf",
                 lambda f: fig.savefig(f, format="pdf", bbox_inches="tight"))
    plt.close(fig)
    return os.path.basename(path)


def mean_band(values_SxX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds and the 95% seed-level t-interval at each x (the evidence layer's t-interval
    of the claims; NaN band with fewer than two seeds)."""
    v = np.asarray(values_SxX, np.float64)
    mean = v.mean(0)
    if v.shape[0] < 2:
        return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    lo, hi = zip(*(seed_t_interval(v[:, j]) for j in range(v.shape[1])))
    return mean, np.asarray(lo), np.asarray(hi)


def _legend_outside(ax_or_fig, handles=None, labels=None):
    if handles is None:
        handles, labels = ax_or_fig.get_legend_handles_labels()
    target = ax_or_fig
    target.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0, frameon=False)


def _seeds(by_seed):
    return sorted(by_seed)


WA_COLOR, ENS_COLOR, DIAG_COLOR = COLORS["warm_M6"], COLORS["ens"], "#777777"


def lmc_curves(by_seed) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """What fig_lmc draws, per member pair: (λ_L, {"wa" | "ens" | "diag": accuracy_SxL}) on each
    seed's OOD split, seeds in order."""
    ood = {s: ood_split(by_seed[s]) for s in _seeds(by_seed)}
    rows = [r for s in _seeds(by_seed) for r in by_seed[s]
            if r["analysis"] == "lmc" and r["split"] == ood[s]]
    out = {}
    for p in dict.fromkeys(r["pair"] for r in rows):
        curves = {}
        for s in _seeds(by_seed):
            pr = sorted((r for r in by_seed[s] if r["analysis"] == "lmc" and r["split"] == ood[s]
                         and r["pair"] == p), key=lambda r: r["lambda"])
            if pr:
                curves[s] = pr
        n = min(len(v) for v in curves.values())
        lam = np.array([r["lambda"] for r in next(iter(curves.values()))[:n]])
        out[p] = lam, {key: np.array([[r[key] for r in v[:n]] for v in curves.values()])
                       for key in ("wa", "ens", "diag")}
    return out


def fig_lmc(by_seed, path):
    """Accuracy on the run's OOD split along λ for each member pair (Fig. 3): WA, ENS and the
    diagonal, mean over seeds and 95% band; below, WA − diagonal, the claim's statistic."""
    curves = lmc_curves(by_seed)
    if not curves:
        return None
    ood = {s: ood_split(by_seed[s]) for s in _seeds(by_seed)}
    fig, axes = plt.subplots(2, len(curves), figsize=(2.9 * len(curves) + 1.2, 4.6),
                             squeeze=False, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for j, (p, (lam, acc)) in enumerate(curves.items()):
        for key, ls, c, label in (("wa", "-", WA_COLOR, "WA"), ("ens", "--", ENS_COLOR, "ENS"),
                                  ("diag", ":", DIAG_COLOR, "diagonal")):
            mean, lo, hi = mean_band(acc[key])
            axes[0][j].plot(lam, mean, ls, lw=1.5, color=c, label=label)
            axes[0][j].fill_between(lam, lo, hi, color=c, alpha=0.12, lw=0)
        mean, lo, hi = mean_band(acc["wa"] - acc["diag"])
        axes[1][j].plot(lam, mean, "-", lw=1.5, color=WA_COLOR)
        axes[1][j].fill_between(lam, lo, hi, color=WA_COLOR, alpha=0.15, lw=0)
        axes[1][j].axhline(0, color="k", lw=0.6)
        axes[0][j].set_title(p.replace("_", " "), fontsize=9)
        axes[1][j].set_xlabel("λ")
    split = "/".join(sorted(set(ood.values())))
    axes[0][0].set_ylabel(f"{split} accuracy", fontsize=8)
    axes[1][0].set_ylabel("WA − diagonal", fontsize=8)
    _legend_outside(axes[0][-1])
    fig.suptitle(f"Linear mode connectivity: mean over {len(_seeds(by_seed))} seeds, 95% band",
                 fontsize=9)
    return save_figure(fig, path)


def wa_minus_ens_by_split(by_seed) -> dict[str, np.ndarray]:
    """{subset: per seed, mean over its evaluation pairs of WA − ENS correctness}: the paired
    statistic the corruption claims are decided on, as the figure draws it."""
    seeds = [s for s in _seeds(by_seed) if any(r["analysis"] == "units" for r in by_seed[s])]
    out = {}
    for s in seeds:
        for r in by_seed[s]:
            if r["analysis"] == "units" and r.get("what") == "wa_minus_ens":
                out.setdefault(r["split"], []).append(float(np.mean(r["values"])))
    return {k: np.asarray(v) for k, v in out.items()}


def fig_corruption(by_seed, path):
    """Per split, WA and ENS accuracy (mean over seeds, 95% interval) and WA − ENS, the paired
    statistic of the claims (mean and 95% seed-level interval, dots: seeds): the gap is small
    next to the accuracies, so it has its own axis (Figs. 4-5)."""
    seeds = [s for s in _seeds(by_seed) if any(r["analysis"] == "corruption" for r in by_seed[s])]
    if not seeds:
        return None
    splits = list(dict.fromkeys(r["split"] for r in by_seed[seeds[0]]
                                if r["analysis"] == "corruption"))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    x = np.arange(len(splits))
    for off, prefix, c in ((-0.2, "wa_M", WA_COLOR), (0.2, "ens_M", ENS_COLOR)):
        acc = np.array([[corruption_accuracy(by_seed[s], prefix, sp) for sp in splits]
                        for s in seeds])
        mean, lo, hi = mean_band(acc)
        ax.bar(x + off, mean, 0.4, color=c, alpha=0.7, label=prefix.rstrip("_M").upper())
        ax.errorbar(x + off, mean, yerr=[mean - lo, hi - mean], fmt="none", ecolor="k", lw=0.8,
                    capsize=2)
    low = np.nanmin([corruption_accuracy(by_seed[s], p, sp) for s in seeds for sp in splits
                     for p in ("wa_M", "ens_M")])
    ax.set_ylim(max(0.0, low - 0.08), 1.0)
    ax.set_xticks(x, splits, rotation=20, fontsize=8)
    ax.set_ylabel("accuracy (mean, 95% interval)")
    ax.legend(fontsize=7, frameon=False)
    gaps = wa_minus_ens_by_split({s: by_seed[s] for s in seeds})
    for i, sp in enumerate(splits):
        d = gaps.get(sp)
        if d is None:
            continue
        mean, lo, hi = mean_band(d[:, None])
        ax2.errorbar([i], mean, yerr=[mean - lo, hi - mean], fmt="o", color=WA_COLOR, capsize=3)
        ax2.plot(np.full(len(d), i + 0.15), d, ".", ms=3, color="k", alpha=0.6)
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xticks(x, splits, rotation=20, fontsize=8)
    ax2.set_ylabel("WA − ENS accuracy (mean, 95%; dots: seeds)", fontsize=8)
    return save_figure(fig, path)


def fig_acc_vs_m(by_seed, path):
    """WA and ENS accuracy on the run's OOD split against M (best members first): mean over
    seeds and 95% band."""
    ood = {s: ood_split(by_seed[s]) for s in _seeds(by_seed)}
    rows = [(s, r) for s in _seeds(by_seed) for r in by_seed[s]
            if r["analysis"] == "acc_vs_m" and r["split"] == ood[s] and r["order"] == "ranked"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5.4, 3.2))
    per_seed = {s: sorted((r for t, r in rows if t == s), key=lambda r: r["m"])
                for s in {t for t, _ in rows}}
    n = min(len(v) for v in per_seed.values())
    ms = [r["m"] for r in next(iter(per_seed.values()))[:n]]
    for key, c in (("wa", WA_COLOR), ("ens", ENS_COLOR)):
        mean, lo, hi = mean_band([[r[key] for r in v[:n]] for v in per_seed.values()])
        ax.plot(ms, mean, "-o", ms=3, lw=1.5, color=c, label=key.upper())
        ax.fill_between(ms, lo, hi, color=c, alpha=0.15, lw=0)
    ax.set_xlabel("M (best members first)")
    ax.set_ylabel(f"{'/'.join(sorted(set(ood.values())))} accuracy")
    ax.set_title(f"Accuracy against M: mean over {len(per_seed)} seeds, 95% band", fontsize=9)
    _legend_outside(ax)
    return save_figure(fig, path)


def bon_curves(bon):
    """{method: {seed: (kl_bon, gold_gain)}} from the curve rows."""
    out = collections.defaultdict(dict)
    for m in dict.fromkeys(r["method"] for r in bon if "n" in r):
        for s in sorted({r["seed"] for r in bon if r["method"] == m and "n" in r}):
            pr = sorted((r for r in bon if r["method"] == m and r.get("seed") == s and "n" in r),
                        key=lambda r: r["n"])
            out[m][s] = (np.array([r["kl_bon"] for r in pr]), np.array([r["gold_gain"] for r in pr]))
    return out


def fig_bon(bon, path):
    """Best-of-n control-reward gain against KL_bon: per method the mean over seeds and its 95%
    band (Figs. 6-7)."""
    curves = bon_curves(bon)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for m, by_seed in curves.items():
        kl = next(iter(by_seed.values()))[0]
        ys = [y for k, y in by_seed.values() if len(y) == len(kl)]
        mean, lo, hi = mean_band(ys)
        ax.plot(kl, mean, "-", lw=1.6, color=COLORS.get(m), label=f"{m} ({len(ys)} seeds)")
        ax.fill_between(kl, lo, hi, color=COLORS.get(m), alpha=0.15, lw=0)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("KL_bon = log n − (n−1)/n")
    ax.set_ylabel("control reward gain over n = 1")
    ax.set_title("Best-of-n: mean over seeds, 95% band", fontsize=9)
    _legend_outside(ax)
    return save_figure(fig, path)


def _runs(evals, method, alpha) -> dict[int, list[dict]]:
    out = collections.defaultdict(list)
    for r in evals.get(method, []):
        if r["run_alpha"] == alpha:
            out[r["seed"]].append(r)
    return {s: sorted(v, key=lambda r: r["step"]) for s, v in sorted(out.items())}


def _kl_grid(runs_by_method) -> np.ndarray:
    """KL points from 0 to the second-largest KL any run reaches: far enough that the runs that
    collapse at a large KL are drawn, while at least two seeds of some method are there."""
    reach = sorted(max(r["kl"] for r in rows) for runs in runs_by_method.values()
                   for rows in runs.values())
    top = reach[-2] if len(reach) > 1 else reach[-1]
    return np.linspace(0.0, max(top, 1e-3), 80)


def kl_band(runs, key, grid):
    """Per point of `grid`: (mean, lo, hi, n) over the seeds whose run reaches that KL, each seed's
    value where it first reaches it (`value_at_kl`, below its first evaluation its step-0 value);
    mean and 95% seed-level t-band only where n >= 2 (NaN elsewhere)."""
    ys = []
    for rows in runs.values():
        y = value_at_kl([r["kl"] for r in rows], [r[key] for r in rows], grid)
        ys.append(np.where(np.isnan(y) & (grid <= rows[0]["kl"]), rows[0][key], y))
    ys = np.asarray(ys)
    n = np.isfinite(ys).sum(0)
    mean, lo, hi = (np.full(grid.shape, np.nan) for _ in range(3))
    for j in np.flatnonzero(n >= 2):
        col = ys[np.isfinite(ys[:, j]), j]
        mean[j], (lo[j], hi[j]) = col.mean(), seed_t_interval(col)
    return mean, lo, hi, n


def step_curves(runs, key) -> tuple[np.ndarray, np.ndarray]:
    """(steps_X, values_SxX): each seed's `key` at the evaluation steps every seed has, seeds in
    order (what a curve against step draws: its mean and band over the seeds)."""
    n = min(len(rows) for rows in runs.values())
    x = np.array([r["step"] for r in next(iter(runs.values()))[:n]])
    return x, np.array([[r[key] for r in rows[:n]] for rows in runs.values()])


def _band_curve(ax, runs, key, x_key, color, label, grid=None):
    """Mean over seeds and 95% band of `key` against step (evaluations shared by every seed) or
    KL (`kl_band`: solid with the band where every seed reaches the KL, dashed without a band
    where only some of them, at least two, do: a t-band on two or three seeds says little)."""
    if x_key == "step":
        x, values_SxX = step_curves(runs, key)
        mean, lo, hi = mean_band(values_SxX)
        ax.plot(x, mean, "-", lw=1.6, color=color, label=label)
        ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
        return
    mean, lo, hi, n = kl_band(runs, key, grid)
    full = n == len(runs)
    part = (n >= 2) & ~full
    part |= np.concatenate([part[1:], [False]]) & full   # join the dashed part to the solid one
    ax.plot(grid, np.where(full, mean, np.nan), "-", lw=1.6, color=color, label=label)
    ax.fill_between(grid, lo, hi, where=full, color=color, alpha=0.15, lw=0)
    if part.any():
        ax.plot(grid, np.where(part, mean, np.nan), "--", lw=1.2, color=color)


def fig_rl(evals, path, x_key):
    """Held-out control reward against RL step or KL: per method and α the mean over seeds and
    its 95% band."""
    alphas = sorted({r["run_alpha"] for rows in evals.values() for r in rows})
    if not alphas:
        return None
    fig, axes = plt.subplots(1, len(alphas), figsize=(4.2 * len(alphas) + 1.4, 3.2),
                             squeeze=False)
    for ax, a in zip(axes[0], alphas):
        runs = {m: _runs(evals, m, a) for m in evals}
        runs = {m: r for m, r in runs.items() if r}
        grid = _kl_grid(runs) if x_key == "kl" else None
        for m, r in runs.items():
            _band_curve(ax, r, "control_reward", x_key, COLORS.get(m), f"{m} ({len(r)} seeds)",
                        grid)
        ax.set_title(f"α = {a}", fontsize=9)
        ax.set_xlabel("RL step" if x_key == "step" else "KL(π ‖ π_SFT), held-out prompts")
    axes[0][0].set_ylabel("held-out control reward")
    _legend_outside(axes[0][-1])
    return save_figure(fig, path)


def hacking_alpha(evals, pair) -> float | None:
    """The α of the central figure: the one most RL methods ran at, among those both of `pair`
    ran at (the smallest on a tie)."""
    alphas = [a for a in sorted({r["run_alpha"] for m in pair for r in evals.get(m, [])})
              if all(any(r["run_alpha"] == a for r in evals.get(m, [])) for m in pair)]
    if not alphas:
        return None
    count = lambda a: sum(any(r["run_alpha"] == a for r in rows) for rows in evals.values())  # noqa
    return max(alphas, key=lambda a: (count(a), -a))


def fig_hacking(evals, pair, path):
    """The paper's central picture (Fig. 1b, 8): held-out control (gold) and proxy reward of the
    single-RM and the WARM policy against RL step and against KL to the SFT policy, mean over
    seeds with the 95% band; `pair` = (WARM, "single")."""
    if pair[0] is None or not all(evals.get(m) for m in pair):
        return None
    a = hacking_alpha(evals, pair)
    if a is None:
        return None
    runs = {m: _runs(evals, m, a) for m in reversed(pair)}
    grid = _kl_grid(runs)
    fig, axes = plt.subplots(2, 2, figsize=(8.6, 5.8), sharey="col")
    for i, x_key in enumerate(("step", "kl")):
        for j, (key, name) in enumerate((("control_reward", "control (gold) reward"),
                                         ("proxy_reward", "proxy reward (its own RM, z-scored)"))):
            ax = axes[i][j]
            for m, r in runs.items():
                _band_curve(ax, r, key, x_key, COLORS.get(m), f"{m} ({len(r)} seeds)", grid)
            ax.set_ylabel(name, fontsize=8)
            ax.set_xlabel("RL step" if x_key == "step" else "KL(π ‖ π_SFT), held-out prompts",
                          fontsize=8)
            if key == "control_reward":
                g0 = np.mean([rows[0]["control_reward"] for r in runs.values()
                              for rows in r.values()])
                ax.axhline(g0, color="k", lw=0.6, ls=":", label="SFT policy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(f"Reward hacking at α = {a}: mean over seeds, 95% band (seed-level t); "
                 "dashed: the mean of the seeds (≥ 2) that reach that KL", fontsize=9)
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels),
               bbox_to_anchor=(0.5, -0.04), frameon=False)
    return save_figure(fig, path)


def fig_m(evals, pair, path):
    """WARM M = 10 against M = 6 (`claims_m.m_pair`): held-out control reward against RL step at
    the α both ran at, mean over seeds and 95% band."""
    if pair[0] is None:
        return None
    alphas = sorted({r["run_alpha"] for r in evals[pair[0]]} &
                    {r["run_alpha"] for r in evals[pair[1]]})
    if not alphas:
        return None
    fig, axes = plt.subplots(1, len(alphas), figsize=(4.2 * len(alphas) + 1.4, 3.2),
                             squeeze=False)
    for ax, a in zip(axes[0], alphas):
        for m in reversed(pair):
            runs = _runs(evals, m, a)
            _band_curve(ax, runs, "control_reward", "step", COLORS.get(m, "#000000"),
                        f"{m} ({len(runs)} seeds)")
        ax.set_title(f"α = {a}", fontsize=9)
        ax.set_xlabel("RL step")
    axes[0][0].set_ylabel("held-out control reward")
    _legend_outside(axes[0][-1])
    return save_figure(fig, path)


def fig_alpha(evals, path):
    """The α sweep: held-out control reward at each run's best RL step (picked on one half of the
    prompts, measured on the other: what `warm_lower_best_alpha` reads) against α, mean over the
    seeds that ran every α and 95% band (methods run at two or more α)."""
    from warm_jax.eval.claims_policy import best_step_reward   # the claim's own statistic
    fig, ax, drawn = None, None, False
    for m, rows in evals.items():
        by = collections.defaultdict(dict)
        for r in rows:
            by[r["seed"]].setdefault(r["run_alpha"], []).append(r)
        alphas = sorted({a for runs in by.values() for a in runs})
        if len(alphas) < 2 or any(a <= 0 for a in alphas):
            continue
        full = [s for s, runs in by.items() if set(runs) == set(alphas)]
        if not full:
            continue
        if fig is None:
            fig, ax = plt.subplots(figsize=(5.4, 3.2))
        ys = [[best_step_reward(sorted(by[s][a], key=lambda r: r["step"])) for a in alphas]
              for s in full]
        mean, lo, hi = mean_band(ys)
        ax.plot(alphas, mean, "-o", ms=3, lw=1.5, color=COLORS.get(m), label=f"{m} ({len(full)} "
                                                                             "seeds)")
        ax.fill_between(alphas, lo, hi, color=COLORS.get(m), alpha=0.15, lw=0)
        drawn = True
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.set_xlabel("KL penalty α")
    ax.set_ylabel("control reward at the best step")
    ax.set_title("The α sweep: mean over seeds, 95% band", fontsize=9)
    _legend_outside(ax)
    return save_figure(fig, path)


def fig_winrates(names, mat, path):
    """Win rate of each final policy (row) against each other (column) on the same held-out
    prompts, every seed and α pooled, with its bootstrap interval over prompts (descriptive: the
    decided win rates are the claims, at each policy's best step)."""
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 1.2 + 0.9 * len(names)))
    grid = np.array([[mat.get((a, b), {}).get("win_rate", np.nan) for b in names] for a in names])
    ax.imshow(grid, vmin=0, vmax=1, cmap="RdBu")
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            cell = mat.get((a, b))
            if cell:
                ax.text(j, i, f"{cell['win_rate']:.2f}\n[{cell['ci_low']:.2f}, "
                              f"{cell['ci_high']:.2f}]", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title("Final policies: win rate of row against column\n(gold comparison, every seed "
                 "pooled; 95% interval over prompts)", fontsize=9)
    return save_figure(fig, path)


def fig_gao(bon, path):
    curves = bon_curves(bon)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for m, by_seed in curves.items():
        kl = np.concatenate([c[0] for c in by_seed.values()])
        y = np.concatenate([c[1] for c in by_seed.values()])
        ax.plot(np.sqrt(kl), y, "o", ms=2, color=COLORS.get(m), label=m)
        try:
            fit = gao_fit(kl, y, "bon")
            dd = np.linspace(0, np.sqrt(kl.max()), 50)
            ax.plot(dd, gao_curve(fit, dd), "-", lw=0.8, color=COLORS.get(m))
        except ValueError:
            pass
    ax.set_xlabel("d = √KL_bon")
    ax.set_ylabel("control reward gain (every seed)")
    ax.set_title("best-of-N with fits d(α − βd)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
