"""The report: figures, claims.json and report.md, regenerated from a work directory's JSONL alone.

    python -m warm_jax.report runs/demo
"""
from __future__ import annotations

import collections
import json
import os
import sys

import numpy as np

from warm_jax.eval.claim_data import (BAKLAVA_ABLATION, PROBE_ABLATION, corruption_accuracy,
                                     load, ood_split)
from warm_jax.eval.claims import compute_claims
from warm_jax.eval.claims_m import m_pair, m_summary
from warm_jax.eval.warp_report import warp_section
from warm_jax.eval.claims_policy import rl_pair
from warm_jax.eval.metrics import winrate_matrix
from warm_jax.eval.tables import (claims_block, claims_tables, ci, effect, fmt, per_seed,
                                  rewrite_readme, run_record)
from warm_jax.fileio import read_json, write_json
from warm_jax.layout import RunLayout, chain
from warm_jax.fileio import atomic_write as write_text
from warm_jax.metrics import read_jsonl
from warm_jax.progress import note_work

def diagnostics(claims: list[dict]) -> list[str]:
    """For each decided claim that did not reproduce, the statistics of its own decision: the
    spread of the seed means against the evaluation noise within a seed, and the seeds that
    would resolve it at the measured effect and spread."""
    out = []
    for c in claims:
        if c["outcome"] not in ("inconclusive", "contradicted"):
            continue
        v = c["variance"] or {}
        msg = (f"effect {effect(c)}, CI {ci(c)} over {c['n_seeds']} seeds (per seed "
               f"{per_seed(c)}); sd of the seed means {fmt(v.get('sd_seed_means'))}")
        if v.get("se_within_seed") is not None:
            msg += f", evaluation noise within a seed {fmt(v.get('se_within_seed'))}"
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


OOD_SPLITS = (("validation", "validation (ID)"), ("test", "test (shifted offline policy)"),
              ("ood", "ood (sampled policies)"))


def _mean_sd(values) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if not v.size:
        return ""
    return f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if v.size > 1 else "")


def ood_section(layout: RunLayout, analysis: dict) -> list[str]:
    """The sampled OOD split (`warm_jax.ood`): its ceiling per split and per source, and how far
    the clean-label members, WA and ENS stay below it (mean ± sd over chain seeds)."""
    if not os.path.exists(layout.ood_summary):
        return []
    rows = read_jsonl(layout.ood_summary)
    whole = {r["split"]: r for r in rows if "source" not in r}
    evals = {s: read_jsonl(p) for s in analysis
             if os.path.exists(p := RunLayout.eval_rows(layout.rm(chain("clean", s))))}
    member = {sp: [np.mean([r[sp] for r in ev if sp in r]) if any(sp in r for r in ev) else None
                   for ev in evals.values()] for sp, _ in OOD_SPLITS}
    gap = {sp: f"{whole[sp]['oracle_accuracy'] - np.mean([m for m in v if m is not None]):.3f}"
           for sp, v in member.items() if sp in whole and any(m is not None for m in v)}
    lines = ["## The OOD split", "",
             "Pairs of responses sampled from policies unlike the offline data (the pretrained base "
             "at T = 1, the SFT policy at T = 1.5 and T = 1; two responses per prompt from one "
             "source), labelled by the same oracle (`warm_jax.ood`). *Oracle accuracy* is how often "
             "a split's labels agree with the gold comparison: the ceiling of any reward model "
             "there. Accuracies: clean labels, mean ± sd over chain seeds.", "",
             "| | " + " | ".join(t for _, t in OOD_SPLITS) + " |", "|---" * 4 + "|",
             "| oracle (ceiling) | " + " | ".join(
                 f"{whole[sp]['oracle_accuracy']:.3f}" if sp in whole else ""
                 for sp, _ in OOD_SPLITS) + " |",
             "| members (mean of M) | " + " | ".join(_mean_sd(member[sp]) for sp, _ in OOD_SPLITS)
             + " |",
             "| gap to the ceiling | " + " | ".join(gap.get(sp, "") for sp, _ in OOD_SPLITS) + " |"]
    for label in ("wa", "ens"):
        accs = {sp: [corruption_accuracy(rows_s, label + "_M", sp) for rows_s in analysis.values()]
                for sp, _ in OOD_SPLITS}
        lines.append(f"| {label.upper()} of all members | "
                     + " | ".join(_mean_sd(accs[sp]) for sp, _ in OOD_SPLITS) + " |")
    lines += ["", "| OOD source | pairs | oracle accuracy | tied pairs |", "|---|---|---|---|"]
    lines += [f"| {r['source']} | {r['pairs']} | {r['oracle_accuracy']:.3f} | {r['ties']:.3f} |"
              for r in rows if "source" in r]
    return lines + [""]


ABLATIONS = (("clean", "shared linear probe, Baklava (the main population)"),
             (PROBE_ABLATION, "a fresh head per member (no linear probe)"),
             (BAKLAVA_ABLATION, "every member from the last SFT checkpoint (no Baklava)"))


def ablation_section(analysis: dict) -> list[str]:
    """WA, ENS, WA − ENS and the members' disagreement on each seed's OOD split, for the main
    clean-label population and each ablation the run has (mean ± sd over chain seeds)."""
    have = [(n, t) for n, t in ABLATIONS if analysis.get(n) and n != "clean"]
    if not have:
        return []
    lines = ["## Ablations: the linear probe and Baklava (clean labels, OOD split)", "",
             "Each population differs from the main one in one thing; the claims "
             "`probe_helps_wa_vs_ens`, `baklava_more_diverse` and `baklava_helps_wa` are decided "
             "on the same OOD pairs, paired.", "",
             "| members | WA accuracy | ENS accuracy | WA − ENS | disagreement |",
             "|---|---|---|---|---|"]
    for name, title in [ABLATIONS[0]] + have:
        cols = collections.defaultdict(list)
        for rows in analysis[name].values():
            sp = ood_split(rows)
            wa, ens = (corruption_accuracy(rows, p, sp) for p in ("wa_M", "ens_M"))
            cols["wa"].append(wa)
            cols["ens"].append(ens)
            cols["diff"].append(wa - ens)
            dis = [np.mean(r["values"]) for r in rows if r.get("analysis") == "units"
                   and r["split"] == sp and r.get("what") == "disagreement"]
            cols["dis"] += dis
        lines.append(f"| {title} | " + " | ".join(_mean_sd(cols[k]) for k in
                                                  ("wa", "ens", "diff", "dis")) + " |")
    return lines + [""]


def m_section(d: dict) -> list[str]:
    """WARM M = 10 against M = 6 in RL (clean labels, the α both ran at): peak and final held-out
    control reward, and where hacking began, mean ± sd over the (α, seed) runs."""
    summary = m_summary(d)
    if not summary:
        return []
    big, main = m_pair(d)
    lines = [f"## WARM beyond M = 6: {big} against {main} (RL, clean labels)", "",
             f"`{main}` averages the best members on validation, `{big}` all of them (the weakest "
             "included). Held-out control reward at the RL evaluations, per run (α "
             f"{sorted({r['alpha'] for r in summary[main]})}, seeds "
             f"{sorted({r['seed'] for r in summary[main]})}), mean ± sd over runs. Hacking "
             "(descriptive, not a test): the first evaluation more than the hacking margin below "
             "the running peak of the full-prompt means (step 0 included); its step and KL are "
             "over the runs that hacked only, the others never fell that far within the run. "
             "The claims `m10_delays_hacking` and `m10_same_peak` are decided above.", "",
             "| method | peak | final | runs that hacked | step of hacking (those runs) | "
             "KL at hacking (those runs) |",
             "|---|---|---|---|---|---|"]
    for m in (main, big):
        rows = summary[m]
        hacked = [r for r in rows if r["hacked"]]
        steps = ", ".join(str(r["hack_step"]) for r in hacked) or "–"
        lines.append(f"| {m} | {_mean_sd([r['peak'] for r in rows])} | "
                     f"{_mean_sd([r['final'] for r in rows])} | {len(hacked)} of {len(rows)} | "
                     f"{steps} | {_mean_sd([r['hack_kl'] for r in hacked]) or '–'} |")
    return lines + [""]


def select(d: dict, methods=None, seeds=None) -> dict:
    """The loaded rows of `d` (`claims.load`) restricted to reward `methods` and chain `seeds`
    (None: all), for drawing a subset (the notebook's pickers)."""
    keep_s = (lambda s: True) if seeds is None else (lambda s: s in set(seeds))  # noqa: E731
    keep_m = (lambda m: True) if methods is None else (lambda m: m in set(methods))  # noqa: E731

    def rows(rs):
        return [r for r in rs if keep_s(r.get("seed")) and keep_m(r.get("method"))]

    def policy(p):
        return {"bon": rows(p["bon"]), **{k: {m: [r for r in v if keep_s(r.get("seed"))]
                                               for m, v in p[k].items() if keep_m(m)}
                                           for k in ("train", "eval", "final")}}
    out = dict(d, **policy(d), corrupt_policy=policy(d["corrupt_policy"]) if d.get(
        "corrupt_policy") else d.get("corrupt_policy"))
    out["analysis"] = {n: {s: r for s, r in v.items() if keep_s(s)}
                       for n, v in d["analysis"].items()}
    out["warp"] = {m: [r for r in v if keep_s(r.get("seed"))] for m, v in d["warp"].items()
                   if keep_m(m)}
    return out


def draw_figures(d: dict, figdir: str) -> dict:
    """Every report figure of the loaded rows `d` into `figdir`: {title: file name or None}."""
    # matplotlib is imported here, not at import: every launch imports this module (a gin
    # configurable) and most never draw (~0.4 s each)
    from warm_jax.eval.figures import (fig_acc_vs_m, fig_alpha, fig_bon, fig_corruption, fig_gao,
                                       fig_hacking, fig_lmc, fig_m, fig_rl, fig_winrates)
    from warm_jax.eval.warp_report import fig_warp
    os.makedirs(figdir, exist_ok=True)
    names, mat = winrate_matrix(d["final"])
    figs = {
        "Reward hacking: control and proxy reward of the single-RM and the WARM policy": fig_hacking(
            d["eval"], rl_pair(d), f"{figdir}/hacking.png"),
        "LMC (clean labels, OOD split)": fig_lmc(d["analysis"]["clean"], f"{figdir}/lmc.png"),
        "Label corruption study (25% flipped)": fig_corruption(d["analysis"]["corrupt"],
                                                               f"{figdir}/corruption.png"),
        "Accuracy against M (clean labels)": fig_acc_vs_m(d["analysis"]["clean"],
                                                          f"{figdir}/acc_vs_m.png"),
        "Best-of-N": fig_bon(d["bon"], f"{figdir}/bon.png"),
        "Gao et al. fits (best-of-N)": fig_gao(d["bon"], f"{figdir}/gao.png"),
        "RL: held-out control reward against steps": fig_rl(d["eval"], f"{figdir}/rl_steps.png",
                                                            "step"),
        "RL: the KL–control-reward front": fig_rl(d["eval"], f"{figdir}/pareto.png", "kl"),
        "Win rates of the final policies (gold comparison, descriptive)": fig_winrates(
            names, mat, f"{figdir}/winrates.png"),
        "RL: the α sweep (control reward at the best step)": fig_alpha(d["eval"],
                                                                        f"{figdir}/alpha.png"),
        "RL: WARM beyond M = 6 (held-out control reward against steps)": fig_m(
            d["eval"], m_pair(d), f"{figdir}/m10.png"),
        "WARP: control reward against KL to the SFT policy": fig_warp(d, f"{figdir}/warp.png"),
    }
    corrupt = d["corrupt_policy"]   # FULL=1: best-of-N and RL against the corrupt-label RMs
    if corrupt:
        figs.update({
            "Best-of-N (reward models of 25% flipped labels)": fig_bon(
                corrupt["bon"], f"{figdir}/bon_corrupt.png"),
            "RL against reward models of 25% flipped labels: control reward against steps":
                fig_rl(corrupt["eval"], f"{figdir}/rl_steps_corrupt.png", "step"),
            "RL against reward models of 25% flipped labels: the KL–control-reward front": fig_rl(
                corrupt["eval"], f"{figdir}/pareto_corrupt.png", "kl"),
            "Win rates of the final policies, reward models of 25% flipped labels": fig_winrates(
                *winrate_matrix(corrupt["final"]), f"{figdir}/winrates_corrupt.png"),
        })
    return figs


def write_report(*, workdir: str) -> dict:
    """report.md, claims.json and figures/ from the run's JSONL alone."""
    note_work()   # always rewritten: a launch never skips it
    layout = RunLayout(workdir)
    with layout.locks([layout.report, layout.claims, layout.figures]):
        return _write_report(layout)


def _write_report(layout: RunLayout) -> dict:
    workdir = layout.root
    figdir = layout.figures
    os.makedirs(figdir, exist_ok=True)
    d = load(workdir)
    claims = compute_claims(workdir, d)
    write_json(layout.claims, claims)
    names, mat = winrate_matrix(d["final"])
    figs = draw_figures(d, figdir)
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
    lines += claims_tables(claims)
    lines += diagnostics(claims)
    lines += ood_section(layout, d["analysis"]["clean"])
    lines += ablation_section(d["analysis"])
    lines += m_section(d)
    lines += warp_section(d, timings.get("warp"))
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
        lines += [f"| {m} | {fmt(a)} | {fmt(b)} |" for m, (a, b) in norms.items()]
        lines.append("")
    lines += ["## Stage timings (s)", "", "```", json.dumps(timings, indent=1), "```", ""]
    notes = os.path.join(workdir, "notes.md")
    if os.path.exists(notes):
        lines += [open(notes).read()]
    write_text(layout.report, "\n".join(lines))
    return {"claims": claims, "figures": {k: v for k, v in figs.items() if v}}


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
    out = write_report(workdir=args.workdir)
    for c in out["claims"]:
        print(f"{c['claim']:28s} {c['outcome']}")
    print(f"wrote {args.workdir}/report.md, claims.json and {len(out['figures'])} figures")
    if args.readme:
        rewrite_readme(args.readme, claims_block(run_record(RunLayout(args.workdir))))
        print(f"rewrote the claims block of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
