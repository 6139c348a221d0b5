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

from warm_jax.eval.claims import ood_split  # noqa: E402
from warm_jax.eval.metrics import gao_curve, gao_fit, win_rate  # noqa: E402
from warm_jax.layout import atomic_write  # noqa: E402

COLORS = {"single": "tab:red", "warm_M2": "tab:cyan", "warm_M6": "tab:blue", "warm_M10": "navy",
          "ens": "tab:orange", "ens_M2": "tab:olive", "wco": "tab:brown", "uwo": "tab:purple",
          "greedy": "tab:green"}


def _save(fig, path):
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return os.path.basename(path)


def _seeds(by_seed):
    return sorted(by_seed)


def fig_lmc(by_seed, path):
    """Accuracy on the run's OOD split along λ for each member pair (Fig. 3)."""
    ood = {s: ood_split(by_seed[s]) for s in _seeds(by_seed)}
    rows = [r for s in _seeds(by_seed) for r in by_seed[s]
            if r["analysis"] == "lmc" and r["split"] == ood[s]]
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    if not pairs:
        return None
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs), 3), squeeze=False)
    for ax, p in zip(axes[0], pairs):
        for i, s in enumerate(_seeds(by_seed)):   # one thin line per chain seed
            pr = sorted((r for r in by_seed[s] if r["analysis"] == "lmc" and r["split"] == ood[s]
                         and r["pair"] == p), key=lambda r: r["lambda"])
            lam = [r["lambda"] for r in pr]
            for key, style, c in (("wa", "-o", "tab:blue"), ("ens", "--s", "tab:orange"),
                                  ("diag", ":", "gray")):
                ax.plot(lam, [r[key] for r in pr], style, ms=2, lw=0.9, color=c, alpha=0.8,
                        label=(key.upper() if key != "diag" else "diag") if i == 0 else None)
        ax.set_title(p.replace("_", " "))
        ax.set_xlabel("λ")
    axes[0][0].set_ylabel(f"{'/'.join(sorted(set(ood.values())))} accuracy (one line per seed)")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def corruption_accuracy(rows, prefix, split):
    """The `corruption` row's accuracy of the model named `prefix`… (wa_M, ens_M, member_) on
    `split`; NaN if the run has none."""
    return next((r["acc"] for r in rows if r["analysis"] == "corruption"
                 and r["model"].startswith(prefix) and r["split"] == split), np.nan)


def fig_corruption(by_seed, path):
    seeds = [s for s in _seeds(by_seed) if any(r["analysis"] == "corruption" for r in by_seed[s])]
    if not seeds:
        return None
    splits = list(dict.fromkeys(r["split"] for r in by_seed[seeds[0]]
                                if r["analysis"] == "corruption"))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    x = np.arange(len(splits))
    for off, prefix, c in ((-0.2, "wa_M", "tab:blue"), (0.2, "ens_M", "tab:orange")):
        acc = np.array([[corruption_accuracy(by_seed[s], prefix, sp) for sp in splits]
                        for s in seeds])
        ax.bar(x + off, acc.mean(0), 0.4, color=c, alpha=0.6,
               label=prefix.rstrip("_M").upper() + " (mean; dots: seeds)")
        for row in acc:
            ax.plot(x + off, row, "k.", ms=3)
    ax.set_xticks(x, splits, rotation=20, fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize=7)
    for i, sp in enumerate(splits):   # the paired statistic the claims are decided on
        d = [np.mean(r["values"]) for s in seeds for r in by_seed[s]
             if r["analysis"] == "units" and r["split"] == sp
             and r.get("what") == "wa_minus_ens"]
        ax2.plot([i] * len(d), d, "o", ms=4, color="tab:blue")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xticks(x, splits, rotation=20, fontsize=8)
    ax2.set_ylabel("WA − ENS accuracy (one dot per seed)")
    return _save(fig, path)


def fig_acc_vs_m(by_seed, path):
    """WA and ENS accuracy on the run's OOD split against M (best members first)."""
    ood = {s: ood_split(by_seed[s]) for s in _seeds(by_seed)}
    rows = [(s, r) for s in _seeds(by_seed) for r in by_seed[s]
            if r["analysis"] == "acc_vs_m" and r["split"] == ood[s] and r["order"] == "ranked"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for i, s in enumerate(_seeds(by_seed)):
        pr = sorted((r for t, r in rows if t == s), key=lambda r: r["m"])
        for key, c in (("wa", "tab:blue"), ("ens", "tab:orange")):
            ax.plot([r["m"] for r in pr], [r[key] for r in pr], "-", lw=0.9, color=c,
                    label=key.upper() if i == 0 else None)
    ax.set_xlabel("M (best members first; one line per seed)")
    ax.set_ylabel(f"{'/'.join(sorted(set(ood.values())))} accuracy")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _bon_curves(bon):
    """{method: {seed: (kl_bon, gold_gain)}} from the curve rows."""
    out = collections.defaultdict(dict)
    for m in dict.fromkeys(r["method"] for r in bon if "n" in r):
        for s in sorted({r["seed"] for r in bon if r["method"] == m and "n" in r}):
            pr = sorted((r for r in bon if r["method"] == m and r.get("seed") == s and "n" in r),
                        key=lambda r: r["n"])
            out[m][s] = (np.array([r["kl_bon"] for r in pr]), np.array([r["gold_gain"] for r in pr]))
    return out


def fig_bon(bon, path):
    curves = _bon_curves(bon)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for m, by_seed in curves.items():
        for i, (kl, y) in enumerate(by_seed.values()):
            ax.plot(kl, y, "-", lw=0.8, alpha=0.7, color=COLORS.get(m), label=m if i == 0 else None)
    ax.set_xlabel("KL_bon = log n − (n−1)/n")
    ax.set_ylabel("control reward gain (one line per seed)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def fig_rl(evals, path, x_key):
    """Held-out evaluations: control reward against step or KL, one thin line per seed."""
    alphas = sorted({r["run_alpha"] for rows in evals.values() for r in rows})
    if not alphas:
        return None
    fig, axes = plt.subplots(1, len(alphas), figsize=(4.2 * len(alphas), 3.2), squeeze=False)
    for ax, a in zip(axes[0], alphas):
        for m, rows in evals.items():
            seeds = sorted({r["seed"] for r in rows if r["run_alpha"] == a})
            for i, s in enumerate(seeds):
                pr = sorted((r for r in rows if r["run_alpha"] == a and r["seed"] == s),
                            key=lambda r: r["step"])
                ax.plot([r[x_key] for r in pr], [r["control_reward"] for r in pr], "-", lw=0.9,
                        marker="." if x_key == "kl" else None, color=COLORS.get(m),
                        label=m if i == 0 else None)
        ax.set_title(f"α = {a}")
        ax.set_xlabel("RL step" if x_key == "step" else "KL(π ‖ π_SFT), held-out prompts")
    axes[0][0].set_ylabel("held-out control reward")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def fig_m(evals, pair, path):
    """WARM M = 10 against M = 6 (`claims_m.m_pair`): held-out control reward against RL step at
    the α both ran at, one thin line per seed and the mean over seeds thick."""
    if pair[0] is None:
        return None
    by = {m: {(r["run_alpha"], r["seed"]): r for r in evals[m]} for m in pair}
    alphas = sorted({a for a, _ in by[pair[0]]} & {a for a, _ in by[pair[1]]})
    if not alphas:
        return None
    fig, axes = plt.subplots(1, len(alphas), figsize=(4.2 * len(alphas), 3.2), squeeze=False)
    color = {pair[0]: COLORS.get(pair[0], "navy"), pair[1]: COLORS.get(pair[1], "tab:blue")}
    for ax, a in zip(axes[0], alphas):
        for m in reversed(pair):
            curves = []
            for s in sorted({s for b, s in by[m] if b == a}):
                pr = sorted((r for r in evals[m] if r["run_alpha"] == a and r["seed"] == s),
                            key=lambda r: r["step"])
                curves.append([r["control_reward"] for r in pr])
                ax.plot([r["step"] for r in pr], curves[-1], "-", lw=0.6, alpha=0.5,
                        color=color[m])
            n = min(len(c) for c in curves)
            ax.plot([r["step"] for r in pr][:n], np.mean([c[:n] for c in curves], 0),
                    "--" if m == pair[0] else "-", lw=2.2, color=color[m],
                    label=f"{m} (mean of {len(curves)} seeds)")
        ax.set_title(f"α = {a}")
        ax.set_xlabel("RL step")
    axes[0][0].set_ylabel("held-out control reward")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def fig_alpha(evals, path):
    """The α sweep: final held-out control reward against α, one thin line per seed and method
    (only methods run at two or more α)."""
    fig, ax, drawn = None, None, False
    for m, rows in evals.items():
        last = {}
        for r in rows:   # the latest evaluation of each (α, seed)
            k = (r["run_alpha"], r["seed"])
            if k not in last or r["step"] > last[k]["step"]:
                last[k] = r
        alphas = sorted({a for a, _ in last})
        if len(alphas) < 2 or any(a <= 0 for a in alphas):
            continue
        if fig is None:
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for i, s in enumerate(sorted({s for _, s in last})):
            pts = [(a, last[(a, s)]["control_reward"]) for a in alphas if (a, s) in last]
            ax.plot(*zip(*pts), "-o", ms=3, lw=0.9, alpha=0.8, color=COLORS.get(m),
                    label=m if i == 0 else None)
        drawn = True
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.set_xlabel("KL penalty α")
    ax.set_ylabel("final held-out control reward")
    ax.legend(fontsize=7)
    return _save(fig, path)


def winrate_matrix(final):
    golds = {}
    for m, rows in final.items():
        for r in rows:
            if "gold_per_prompt" in r:
                golds.setdefault(m, {})[(r["run_alpha"], r["seed"])] = r["gold_per_prompt"]
    names = sorted(golds)
    mat = {}
    for a in names:
        for b in names:
            keys = sorted(set(golds[a]) & set(golds[b]))
            if keys:
                ga = np.concatenate([golds[a][k] for k in keys])
                gb = np.concatenate([golds[b][k] for k in keys])
                mat[(a, b)] = win_rate(ga, gb)
    return names, mat


def fig_winrates(names, mat, path):
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(1 + 0.9 * len(names), 0.8 + 0.8 * len(names)))
    grid = np.array([[mat.get((a, b), {}).get("win_rate", np.nan) for b in names] for a in names])
    ax.imshow(grid, vmin=0, vmax=1, cmap="RdBu")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title("final policies: win rate of row vs column\n(gold, all seeds pooled)", fontsize=9)
    return _save(fig, path)


def fig_gao(bon, path):
    curves = _bon_curves(bon)
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
    return _save(fig, path)
