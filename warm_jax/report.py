"""The report: figures, claims.json and report.md, regenerated from a work directory's JSONL alone.

    python -m warm_jax.report runs/demo
"""
from __future__ import annotations

import collections
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from warm_jax.eval.claims import compute_claims, load  # noqa: E402
from warm_jax.eval.metrics import gao_curve, gao_fit, pareto_front, win_rate  # noqa: E402
from warm_jax.layout import RunLayout, atomic_write, read_json, write_json  # noqa: E402
from warm_jax.layout import atomic_write as write_text  # noqa: E402

COLORS = {"single": "tab:red", "warm_M2": "tab:cyan", "warm_M6": "tab:blue", "ens": "tab:orange",
          "wco": "tab:brown", "uwo": "tab:purple", "greedy": "tab:green"}


def _save(fig, path):
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return os.path.basename(path)


def fig_lmc(rows, path):
    rows = [r for r in rows if r["analysis"] == "lmc" and r["split"] == "test"]
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    if not pairs:
        return None
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs), 3), squeeze=False)
    for ax, p in zip(axes[0], pairs):
        pr = sorted((r for r in rows if r["pair"] == p), key=lambda r: r["lambda"])
        lam = [r["lambda"] for r in pr]
        for key, style in (("wa", "-o"), ("ens", "--s"), ("diag", ":")):
            ax.plot(lam, [r[key] for r in pr], style, ms=3, label=key.upper() if key != "diag" else "diag")
        ax.set_title(p.replace("_", " "))
        ax.set_xlabel("λ")
    axes[0][0].set_ylabel("OOD test accuracy")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def fig_corruption(rows, path):
    rows_c = [r for r in rows if r["analysis"] == "corruption"]
    if not rows_c:
        return None
    splits = list(dict.fromkeys(r["split"] for r in rows_c))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    x = np.arange(len(splits))
    mem = [[r["acc"] for r in rows_c if r["model"].startswith("member") and r["split"] == s]
           for s in splits]
    ax.bar(x - 0.25, [np.mean(m) for m in mem], 0.25, yerr=[np.std(m) for m in mem],
           label="members (mean ± std)", color="lightgray")
    for off, prefix, c in ((0.0, "wa_M", "tab:blue"), (0.25, "ens_M", "tab:orange")):
        ax.bar(x + off, [next(r["acc"] for r in rows_c if r["model"].startswith(prefix)
                              and r["split"] == s) for s in splits], 0.25,
               label=prefix.rstrip("_M").upper(), color=c)
    ax.set_xticks(x, splits, rotation=20, fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize=7)
    pairs = [r for r in rows if r["analysis"] == "corruption_pair"]
    for s in ("train_corrupt", "validation", "test"):
        v = [r["wa_minus_ens"] for r in pairs if r["split"] == s]
        if v:
            ax2.hist(v, bins=10, alpha=0.5, label=s)
    ax2.axvline(0, color="k", lw=0.8)
    ax2.set_xlabel("WA − ENS accuracy, per pair of members")
    ax2.legend(fontsize=7)
    return _save(fig, path)


def fig_acc_vs_m(rows, path):
    rows = [r for r in rows if r["analysis"] == "acc_vs_m" and r["split"] == "test"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for order in dict.fromkeys(r["order"] for r in rows):
        pr = sorted((r for r in rows if r["order"] == order), key=lambda r: r["m"])
        ls = "-" if order == "ranked" else ":"
        ax.plot([r["m"] for r in pr], [r["wa"] for r in pr], ls, color="tab:blue",
                label=f"WA {order}" if order in ("ranked", "random_0") else None)
        ax.plot([r["m"] for r in pr], [r["ens"] for r in pr], ls, color="tab:orange",
                label=f"ENS {order}" if order in ("ranked", "random_0") else None)
    ax.set_xlabel("M")
    ax.set_ylabel("OOD test accuracy")
    ax.legend(fontsize=7)
    return _save(fig, path)


def fig_bon(bon, path):
    if not bon:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for m in dict.fromkeys(r["method"] for r in bon):
        pr = [r for r in bon if r["method"] == m]
        ax.plot([r["kl_bon"] for r in pr], [r["gold_gain"] for r in pr], "-o", ms=3, label=m,
                color=COLORS.get(m))
    ax.set_xlabel("KL_bon = log n − (n−1)/n")
    ax.set_ylabel("control reward gain")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _grouped(train):
    """{alpha: {method: (steps, mean control, std control, mean kl)}} over seeds."""
    out = collections.defaultdict(dict)
    for m, rows in train.items():
        by = collections.defaultdict(lambda: collections.defaultdict(list))
        for r in rows:
            by[r["run_alpha"]][r["step"]].append((r["control_reward"], r["kl"]))
        for a, steps in by.items():
            s = sorted(steps)
            out[a][m] = (s, [np.mean([x[0] for x in steps[k]]) for k in s],
                         [np.std([x[0] for x in steps[k]]) for k in s],
                         [np.mean([x[1] for x in steps[k]]) for k in s])
    return out


def fig_rl(train, path, x_key):
    g = _grouped(train)
    if not g:
        return None
    alphas = sorted(g)
    fig, axes = plt.subplots(1, len(alphas), figsize=(4.2 * len(alphas), 3.2), squeeze=False)
    for ax, a in zip(axes[0], alphas):
        for m, (steps, mean, std, kl) in g[a].items():
            x = steps if x_key == "step" else kl
            ax.plot(x, mean, "-", lw=1.2, label=m, color=COLORS.get(m))
            if x_key == "step":
                ax.fill_between(x, np.subtract(mean, std), np.add(mean, std), alpha=0.15,
                                color=COLORS.get(m))
        if x_key == "kl":  # the front over every logged point of every seed
            for m, rows in train.items():
                pts = [(r["kl"], r["control_reward"]) for r in rows if r["run_alpha"] == a]
                if pts:
                    f = pareto_front(*zip(*pts))
                    ax.plot([pts[i][0] for i in f], [pts[i][1] for i in f], "--", lw=0.8,
                            color=COLORS.get(m))
        ax.set_title(f"α = {a}")
        ax.set_xlabel("RL step" if x_key == "step" else "KL(π ‖ π_SFT)")
    axes[0][0].set_ylabel("control (gold) reward")
    axes[0][0].legend(fontsize=7)
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
    ax.set_title("win rate of row vs column", fontsize=9)
    return _save(fig, path)


def fig_gao(d, path):
    bon = d["bon"]
    if not bon:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for m in dict.fromkeys(r["method"] for r in bon):
        pr = [r for r in bon if r["method"] == m]
        kl = np.array([r["kl_bon"] for r in pr])
        y = np.array([r["gold_gain"] for r in pr])
        ax.plot(np.sqrt(kl), y, "o", ms=3, color=COLORS.get(m), label=m)
        try:
            fit = gao_fit(kl, y, "bon")
            dd = np.linspace(0, np.sqrt(kl.max()), 50)
            ax.plot(dd, gao_curve(fit, dd), "-", lw=0.8, color=COLORS.get(m))
        except ValueError:
            pass
    ax.set_xlabel("d = √KL_bon")
    ax.set_ylabel("control reward gain")
    ax.set_title("best-of-N with fits d(α − βd)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


def diagnostics(claims: list[dict]) -> list[str]:
    """For each claim that did not reproduce, what the run's own numbers say about why."""
    out = []
    for c in claims:
        if c["reproduced"] is not False:
            continue
        n = c["numbers"]
        if c["claim"] == "lmc_above_diag":
            gaps, se = n["wa_minus_diag_by_pair"], n.get("accuracy_se_test")
            msg = f"WA − diag per pair {_fmt(gaps)}; one accuracy's standard error is {_fmt(se)}. "
            if se is not None and all(abs(g) < 2 * se for g in gaps.values()):
                msg += ("Every gap is within two standard errors of zero: the interpolation path "
                        "is flat, neither the convex bulge of the paper nor a barrier — the toy "
                        "members (short fine-tunings of one linear probe) differ too little for "
                        "averaging to add much.")
            elif se is not None:
                msg += "Some gap exceeds two standard errors: see the LMC figure."
        elif c["claim"] == "wa_ood_at_least_ens":
            parts, within = [], True
            for k, v in n.items():
                parts.append(f"{k}: WA {_fmt(v['wa'])} vs ENS {_fmt(v['ens'])} "
                             f"(SE {_fmt(v['accuracy_se'])})")
                within &= v["accuracy_se"] is not None and abs(v["wa"] - v["ens"]) < 2 * v["accuracy_se"]
            msg = "; ".join(parts) + (". Each difference is within two standard errors: this run "
                                      "cannot tell WA from ENS out of distribution." if within else ".")
        elif c["claim"] == "bon_ordering":
            msg = (f"Gains at N={n['n']}: {_fmt(n['gold_gain'])}; each method's best n: "
                   f"{_fmt(n['peak'])}. At the largest N every reward is past its peak, so the "
                   "ordering there measures how fast each reward is hacked; the best-n gains are "
                   "close together (128 prompts: noise of a few hundredths).")
        elif c["claim"] == "warm_vs_wco_uwo":
            msg = (f"Best-of-N gains at the largest N: {_fmt(n)} — every reward is past its peak "
                   "there; compare the curves in the best-of-N figure.")
        else:
            msg = f"numbers: {_fmt(n)}"
        out.append(f"- **{c['claim']}** — {msg}")
    if out:
        out = ["## Why some claims did not reproduce (from this run's numbers)", ""] + out + [""]
    return out


def write_report(workdir: str) -> dict:
    """report.md, claims.json and figures/ from the run's JSONL alone."""
    layout = RunLayout(workdir)
    with layout.locks([layout.report, layout.claims, layout.figures]):
        return _write_report(layout)


def _write_report(layout: RunLayout) -> dict:
    workdir = layout.root
    figdir = layout.figures
    os.makedirs(figdir, exist_ok=True)
    d = load(workdir)
    claims = compute_claims(workdir)
    write_json(layout.claims, claims)
    names, mat = winrate_matrix(d["final"])
    figs = {
        "LMC (clean labels, OOD test)": fig_lmc(d["analysis"]["clean"], f"{figdir}/lmc.png"),
        "Label corruption study (25% flipped)": fig_corruption(d["analysis"]["corrupt"],
                                                               f"{figdir}/corruption.png"),
        "Accuracy against M (corrupted labels)": fig_acc_vs_m(d["analysis"]["corrupt"],
                                                              f"{figdir}/acc_vs_m.png"),
        "Best-of-N": fig_bon(d["bon"], f"{figdir}/bon.png"),
        "Gao et al. fits (best-of-N)": fig_gao(d, f"{figdir}/gao.png"),
        "RL: control reward against steps": fig_rl(d["train"], f"{figdir}/rl_steps.png", "step"),
        "RL: control reward against KL (Pareto fronts dashed)": fig_rl(
            d["train"], f"{figdir}/pareto.png", "kl"),
        "Win rates (oracle judge)": fig_winrates(names, mat, f"{figdir}/winrates.png"),
    }
    timings = read_json(layout.timings, {})
    lines = [f"# WARM reproduction report — `{os.path.abspath(workdir)}`", ""]
    info = read_json(layout.run_info)
    if info is not None:
        lines += [f"Produced by: `{info.get('command', '?')}` ({info.get('mode', '?')}); "
                  f"stage wall time {sum(timings.values()):.0f} s.", ""]
    lines += ["## Claims", "", "| claim | reproduced | numbers | rule |", "|---|---|---|---|"]
    for c in claims:
        mark = {True: "**yes**", False: "**no**", None: "n/a"}[c["reproduced"]]
        lines.append(f"| {c['claim']}: {c['finding']} | {mark} | {_fmt(c['numbers'])[:400]} | "
                     f"{c['rule']} |")
    lines += ["", "Spread across seeds and pairs is in `claims.json` (`spread`).", ""]
    lines += diagnostics(claims)
    for title, fig in figs.items():
        if fig:
            lines += [f"## {title}", "", f"![{title}](figures/{fig})", ""]
    if mat:
        lines += ["## Win-rate matrix (row vs column, 95% CI)", "",
                  "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for a in names:
            cells = [f"{mat[(a, b)]['win_rate']:.2f} [{mat[(a, b)]['ci_low']:.2f}, "
                     f"{mat[(a, b)]['ci_high']:.2f}]" if (a, b) in mat else "" for b in names]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    norms = {m: (rows[0].get("reward_shift"), rows[0].get("reward_scale"))
             for m, rows in d["final"].items() if rows}
    if norms:
        lines += ["## Reward normalisation", "",
                  "Each RL reward was z-scored on SFT samples (reward = (r − shift) / scale), so one "
                  "α means the same KL price per unit of reward spread for every method.", "",
                  "| method | shift | scale |", "|---|---|---|"]
        lines += [f"| {m} | {_fmt(a)} | {_fmt(b)} |" for m, (a, b) in norms.items()]
        lines.append("")
    lines += ["## Stage timings (s)", "", "```", json.dumps(timings, indent=1), "```", ""]
    notes = os.path.join(workdir, "notes.md")
    if os.path.exists(notes):
        lines += [open(notes).read()]
    write_text(layout.report, "\n".join(lines))
    return {"claims": claims, "figures": {k: v for k, v in figs.items() if v}}


README_BEGIN = "<!-- claims:begin (generated by python -m warm_jax.report WORKDIR --readme README.md) -->"
README_END = "<!-- claims:end -->"


def claims_block(layout: RunLayout) -> str:
    """The README's claims table, from a run's claims.json, run_info.json and timings.json."""
    claims = read_json(layout.claims)
    if claims is None:
        raise FileNotFoundError(f"{layout.claims} does not exist: run the report first")
    info = read_json(layout.run_info, {})
    wall = sum(read_json(layout.timings, {}).values())
    n_yes = sum(c["reproduced"] is True for c in claims)
    n_no = sum(c["reproduced"] is False for c in claims)
    lines = [f"Claims of a fresh run ({info.get('mode', '?')}; stages {wall:.0f} s), from its "
             "`claims.json`:", "", "| claim | reproduced | numbers |", "|---|---|---|"]
    for c in claims:
        mark = {True: "yes", False: "**no**", None: "n/a"}[c["reproduced"]]
        lines.append(f"| {c['claim']} — {c['finding']} | {mark} | {_fmt(c['numbers'])[:300]} |")
    lines += ["", f"{n_yes} of {len(claims)} reproduce, {n_no} do not, on one seed."]
    return "\n".join(lines)


def rewrite_block(readme: str, begin: str, end: str, block: str, name: str = "generated") -> None:
    """Replace what lies between the markers `begin` and `end` in `readme` with `block`."""
    text = open(readme, encoding="utf-8").read()
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"{readme}: no {name} markers: expected exactly one {begin!r} ... {end!r} "
                         f"block (found {text.count(begin)} begin, {text.count(end)} end)")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    atomic_write(readme, head + begin + "\n" + block + "\n" + end + tail)


def rewrite_readme(readme: str, block: str) -> None:
    """Replace the README's generated claims block with `block`."""
    rewrite_block(readme, README_BEGIN, README_END, block, name="claims")


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="python -m warm_jax.report",
                                 description="report.md, claims.json and figures from a run's JSONL")
    ap.add_argument("workdir")
    ap.add_argument("--readme", help="also rewrite this README's generated claims block")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if not os.path.isdir(args.workdir):
        print(f"error: {args.workdir} is not a directory", file=sys.stderr)
        return 2
    out = write_report(args.workdir)
    for c in out["claims"]:
        print(f"{c['claim']:28s} {c['reproduced']}")
    print(f"wrote {args.workdir}/report.md, claims.json and {len(out['figures'])} figures")
    if args.readme:
        rewrite_readme(args.readme, claims_block(RunLayout(args.workdir)))
        print(f"rewrote the claims block of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
