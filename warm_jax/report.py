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
from warm_jax.eval.metrics import gao_curve, gao_fit, win_rate  # noqa: E402
from warm_jax.layout import RunLayout, atomic_write, read_json, write_json  # noqa: E402
from warm_jax.layout import atomic_write as write_text  # noqa: E402

COLORS = {"single": "tab:red", "warm_M2": "tab:cyan", "warm_M6": "tab:blue", "ens": "tab:orange",
          "ens_M2": "tab:olive", "wco": "tab:brown", "uwo": "tab:purple", "greedy": "tab:green"}


def _save(fig, path):
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return os.path.basename(path)


def _seeds(by_seed):
    return sorted(by_seed)


def fig_lmc(by_seed, path):
    rows = [r for s in _seeds(by_seed) for r in by_seed[s]
            if r["analysis"] == "lmc" and r["split"] == "test"]
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    if not pairs:
        return None
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs), 3), squeeze=False)
    for ax, p in zip(axes[0], pairs):
        for i, s in enumerate(_seeds(by_seed)):   # one thin line per chain seed
            pr = sorted((r for r in by_seed[s] if r["analysis"] == "lmc" and r["split"] == "test"
                         and r["pair"] == p), key=lambda r: r["lambda"])
            lam = [r["lambda"] for r in pr]
            for key, style, c in (("wa", "-o", "tab:blue"), ("ens", "--s", "tab:orange"),
                                  ("diag", ":", "gray")):
                ax.plot(lam, [r[key] for r in pr], style, ms=2, lw=0.9, color=c, alpha=0.8,
                        label=(key.upper() if key != "diag" else "diag") if i == 0 else None)
        ax.set_title(p.replace("_", " "))
        ax.set_xlabel("λ")
    axes[0][0].set_ylabel("OOD test accuracy (one line per seed)")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def _acc(rows, prefix, split):
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
        acc = np.array([[_acc(by_seed[s], prefix, sp) for sp in splits] for s in seeds])
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
             if r["analysis"] == "units" and r["split"] == sp]
        ax2.plot([i] * len(d), d, "o", ms=4, color="tab:blue")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xticks(x, splits, rotation=20, fontsize=8)
    ax2.set_ylabel("WA − ENS accuracy (one dot per seed)")
    return _save(fig, path)


def fig_acc_vs_m(by_seed, path):
    rows = [(s, r) for s in _seeds(by_seed) for r in by_seed[s]
            if r["analysis"] == "acc_vs_m" and r["split"] == "test" and r["order"] == "ranked"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for i, s in enumerate(_seeds(by_seed)):
        pr = sorted((r for t, r in rows if t == s), key=lambda r: r["m"])
        for key, c in (("wa", "tab:blue"), ("ens", "tab:orange")):
            ax.plot([r["m"] for r in pr], [r[key] for r in pr], "-", lw=0.9, color=c,
                    label=key.upper() if i == 0 else None)
    ax.set_xlabel("M (best members first; one line per seed)")
    ax.set_ylabel("OOD test accuracy")
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


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


def _ci(c) -> str:
    return "–" if c["ci"] is None else f"[{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"


def _effect(c) -> str:
    return "–" if c["effect"] is None else f"{c['effect']:+.3f}"


def _per_seed(c) -> str:
    return ", ".join(f"{v:+.3f}" for v in c["per_seed"]) or "–"


OUTCOME_MARK = {"reproduced": "**reproduced**", "contradicted": "**contradicted**",
                "inconclusive": "inconclusive", None: "n/a"}


def diagnostics(claims: list[dict]) -> list[str]:
    """For each decided claim that did not reproduce, the statistics of its own decision: the
    spread of the seed means against the evaluation noise within a seed, and the seeds that
    would resolve it at the measured effect and spread."""
    out = []
    for c in claims:
        if c["outcome"] not in ("inconclusive", "contradicted"):
            continue
        v = c["variance"] or {}
        msg = (f"effect {_effect(c)}, CI {_ci(c)} over {c['n_seeds']} seeds (per seed "
               f"{_per_seed(c)}); sd of the seed means {_fmt(v.get('sd_seed_means'))}")
        if v.get("se_within_seed") is not None:
            msg += f", evaluation noise within a seed {_fmt(v.get('se_within_seed'))}"
        if c["outcome"] == "inconclusive":
            need = c.get("seeds_needed")
            if need and need <= c["n_seeds"]:
                msg += ("; the seed-level t-interval alone already decides it, the bootstrap's "
                        "does not (it carries the evaluation noise within a seed): more units "
                        "per seed, or more seeds, would decide it")
            elif need:
                msg += f"; about {need} seeds would decide it at this effect and spread"
            else:
                msg += "; more seeds would not decide it at this effect"
        out.append(f"- **{c['claim']}** ({c['outcome']}) — {msg}.")
    if out:
        out = ["## Claims not reproduced: what their decisions measured", ""] + out + [""]
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
        "Gao et al. fits (best-of-N)": fig_gao(d["bon"], f"{figdir}/gao.png"),
        "RL: held-out control reward against steps": fig_rl(d["eval"], f"{figdir}/rl_steps.png",
                                                            "step"),
        "RL: held-out control reward against KL to the SFT policy": fig_rl(
            d["eval"], f"{figdir}/pareto.png", "kl"),
        "Win rates of the final policies (gold comparison, descriptive)": fig_winrates(
            names, mat, f"{figdir}/winrates.png"),
    }
    timings = read_json(layout.timings, {})
    lines = [f"# WARM reproduction report — `{os.path.abspath(workdir)}`", ""]
    info = read_json(layout.run_info)
    if info is not None:
        lines += [f"Produced by: `{info.get('command', '?')}` ({info.get('mode', '?')}); "
                  f"stage wall time {sum(timings.values()):.0f} s.", ""]
    seeds = sorted({s for c in claims for s in c["extra"].get("seeds", [])})
    lines += [f"Chain seeds {seeds}: each has its own training-label draw, reward models, "
              "averages, best-of-N samples and RL runs. Pretraining and SFT are shared by every "
              "chain seed: their variance is not in these intervals (the README's base-seed "
              "check covers it).", ""]
    lines += ["## Claims", "", "| claim | paper | outcome | effect | 95% CI | per seed | unit | "
              "rule |", "|---|---|---|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c['claim']}: {c['finding']} | {c['paper_ref']} | "
                     f"{OUTCOME_MARK[c['outcome']]} | {_effect(c)} | {_ci(c)} | {_per_seed(c)} | "
                     f"{c['unit']} ({c['n_units']}) | {c['statistic']}; {c['rule']} |")
    lines += ["", "Every statistic, interval and per-seed value is in `claims.json`.", ""]
    lines += diagnostics(claims)
    for title, fig in figs.items():
        if fig:
            lines += [f"## {title}", "", f"![{title}](figures/{fig})", ""]
    if mat:
        lines += ["## Win-rate matrix (row vs column)", "",
                  "Final policies, judged by gold comparison, every seed and α pooled. "
                  "Descriptive: it has no seed variance and no step selection; the decided win "
                  "rate is the claim `win_rate_warm_vs_single` (each policy at its best step, "
                  "chosen on disjoint prompts).", "",
                  "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for a in names:
            cells = [f"{mat[(a, b)]['win_rate']:.2f}" if (a, b) in mat else "" for b in names]
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


BASE_BEGIN = "<!-- base-seeds:begin (generated by python -m bench.table --readme README.md) -->"
BASE_END = "<!-- base-seeds:end -->"


def run_record(layout: RunLayout) -> dict:
    """What the README's claims blocks need from a finished run: its claims, mode, base seed
    (the `SEED` macro of its config.gin) and stage wall time."""
    claims = read_json(layout.claims)
    if claims is None:
        raise FileNotFoundError(f"{layout.claims} does not exist: run the report first")
    info = read_json(layout.run_info, {})
    seed = None
    if os.path.exists(layout.config_gin):
        for line in open(layout.config_gin, encoding="utf-8"):
            if line.startswith("SEED = "):
                seed = int(line.split("=", 1)[1])
    return {"mode": info.get("mode", "?"), "command": info.get("command"), "base_seed": seed,
            "stages_s": round(sum(read_json(layout.timings, {}).values()), 1), "claims": claims}


def _chain_seeds(claims) -> list:
    return sorted({s for c in claims for s in c["extra"].get("seeds", [])})


def claims_block(record: dict) -> str:
    """The README's claims table, from a run record (`run_record`)."""
    claims = record["claims"]
    count = collections.Counter(c["outcome"] for c in claims)
    decided = [c for c in claims if c["kind"] != "descriptive"]
    lines = [f"Claims of a fresh run ({record['mode']}; base seed {record['base_seed']}, chain "
             f"seeds {_chain_seeds(claims)}; stages {record['stages_s']:.0f} s), from its "
             "`claims.json`:", "",
             "| claim | paper | outcome | effect | 95% CI | per seed | unit |",
             "|---|---|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c['claim']} — {c['finding']} | {c['paper_ref']} | "
                     f"{OUTCOME_MARK[c['outcome']]} | {_effect(c)} | {_ci(c)} | {_per_seed(c)} | "
                     f"{c['unit']} |")
    missing = count[None] - (len(claims) - len(decided))
    lines += ["", f"Of {len(decided)} decided claims: {count['reproduced']} reproduced, "
              f"{count['contradicted']} contradicted, {count['inconclusive']} inconclusive"
              + (f", {missing} without inputs" if missing else "") + "."]
    return "\n".join(lines)


def base_seed_block(records: list[dict]) -> str:
    """Outcomes of the same claims over two (or more) base seeds, and the check that no claim
    goes from reproduced to contradicted between them."""
    ids = [c["claim"] for c in records[0]["claims"]]
    by = [{c["claim"]: c for c in r["claims"]} for r in records]
    head = " | ".join(f"base seed {r['base_seed']}" for r in records)
    lines = [f"| claim | {head} |", "|---" * (len(records) + 1) + "|"]
    flips = []
    for i in ids:
        cells = [(f"{b[i]['outcome'] or 'n/a'} ({_effect(b[i])})" if i in b else "–") for b in by]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
        outs = {b[i]["outcome"] for b in by if i in b}
        if {"reproduced", "contradicted"} <= outs:
            flips.append(i)
    same = sum(len({b[i]["outcome"] for b in by if i in b}) == 1 for i in ids)
    lines += ["", f"{same} of {len(ids)} claims have the same outcome on every base seed; "
              + (f"**{', '.join(flips)} go from reproduced to contradicted**." if flips else
                 "none goes from reproduced to contradicted.")]
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
        print(f"{c['claim']:28s} {c['outcome']}")
    print(f"wrote {args.workdir}/report.md, claims.json and {len(out['figures'])} figures")
    if args.readme:
        rewrite_readme(args.readme, claims_block(run_record(RunLayout(args.workdir))))
        print(f"rewrote the claims block of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
