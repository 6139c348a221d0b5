"""`python -m warm_jax.average.evaluate PAIRS MEMBER MEMBER [...]`: is the weight average as good as
the ensemble on my data? The WARM diagnostic on a user's own preference file.

Scores every member, their uniform weight average (WA), the ensemble of their rewards (ENS) and
Coste et al.'s worst-case (WCO) and uncertainty-weighted (UWO) ensembles on each pair, and prints
each one's accuracy (chosen scored above rejected) and the paired differences WA − ENS and
WA − best member, each with a 95% interval from a bootstrap over the pairs (the evidence layer's
`hierarchical_bootstrap` with one seed) and, for a difference still inconclusive, about how many
pairs would decide it at the measured effect and spread. Members are Hugging Face reward-model directories
(`*ForSequenceClassification`) or warm_jax checkpoints that record their model config; the
tokenizer is the first member's `tokenizer.json` unless `--tokenizer` names one. Truncation is
reported (the prompt's end and the responses' starts are kept). Bad input: one line, exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

Z95 = 1.959963984540054


def load_member(path: str):
    """(params, ModelConfig) of a reward model: a Hugging Face directory or a warm_jax checkpoint."""
    from warm_jax.average import is_hf_dir
    if is_hf_dir(path):
        from warm_jax.models.hf import load_safetensors
        params, cfg = load_safetensors(path)
        if "reward_head" not in params:
            raise ValueError(f"member {path} is a causal LM, not a reward model "
                             "(*ForSequenceClassification)")
        return params, cfg
    from warm_jax.checkpoint import restore_params
    from warm_jax.models import ModelConfig
    params, meta = restore_params(path)
    if "model_config" not in meta:
        raise ValueError(f"member {path}: its checkpoint records no model_config")
    mc = dict(meta["model_config"])
    if mc.get("rope_llama3") is not None:
        mc["rope_llama3"] = tuple(mc["rope_llama3"])
    return params, ModelConfig(**mc)


def interval(diffs_U: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of per-pair differences, its 95% bootstrap interval over pairs, and (while the
    interval holds 0) the pairs a normal-approximation 95% interval would need to exclude it.

    Where the two never differ on a pair, the bootstrap interval is [0, 0], which overstates what
    N pairs show. The rate of differing pairs, hence |mean|, is then below 1 − 0.025^(1/N) ≈
    3.7 / N (the 97.5% one-sided bound, matching the two-sided 95% intervals; the "rule of
    three" at that level). A difference that large would take about 6 / bound pairs to decide:
    an exact two-sided sign test needs 6 differing pairs all one way (2 · 0.5⁶ < 0.05), a
    smaller difference more. `bound` and `pairs_needed_at_bound`."""
    from warm_jax.eval.evidence import hierarchical_bootstrap
    stats = hierarchical_bootstrap([diffs_U], rng=np.random.default_rng(seed), n_boot=n_boot)
    lo, hi = (float(x) for x in np.quantile(stats, [0.025, 0.975]))
    mean, sd = float(diffs_U.mean()), float(diffs_U.std(ddof=1)) if diffs_U.size > 1 else 0.0
    need = None
    if lo <= 0 <= hi and mean != 0 and sd > 0:
        need = int(np.ceil((Z95 * sd / abs(mean)) ** 2))
    out = {"mean": mean, "ci": [lo, hi], "pairs": int(diffs_U.size), "pairs_needed": need,
           "differing": int(np.count_nonzero(diffs_U))}
    if out["differing"] == 0 and diffs_U.size:
        out["bound"] = float(1.0 - 0.025 ** (1.0 / diffs_U.size))
        out["pairs_needed_at_bound"] = int(np.ceil(6 / out["bound"]))
    return out


def evaluate(pairs_path: str, members: list[str], *, tokenizer: str | None = None,
             max_prompt_len: int = 256, max_response_len: int = 128, limit: int | None = None,
             uwo_lambda: float = 0.5, batch_size: int = 64) -> dict:
    import jax
    import jax.numpy as jnp

    from warm_jax.data.preferences import LoadPolicy, encode_pairs, read_preferences
    from warm_jax.data.tokenizer import JsonTokenizer
    from warm_jax.models import RewardModel
    from warm_jax.rm.loss import make_pair_scorer
    if len(members) < 2:
        raise ValueError("give at least two members")
    loaded = [load_member(m) for m in members]
    cfgs = {c for _, c in loaded}
    if len(cfgs) != 1:
        raise ValueError("the members' model configs differ: they cannot be weight-averaged")
    cfg = loaded[0][1]
    tok_path = tokenizer or os.path.join(members[0], "tokenizer.json")
    if not os.path.exists(tok_path):
        raise ValueError(f"no tokenizer: {tok_path} does not exist (give --tokenizer)")
    tok = JsonTokenizer(tok_path)
    from warm_jax.data.conversations import chat_template_of
    pairs, summary = read_preferences(pairs_path, chat_template=chat_template_of(
        os.path.dirname(tok_path)))
    pairs = pairs[:limit] if limit else pairs
    split = encode_pairs(pairs, tok, max_prompt_len=max_prompt_len,
                         max_response_len=max_response_len, policy=LoadPolicy(), summary=summary)
    scorer = make_pair_scorer(RewardModel(cfg), batch_size)
    member_params = [jax.tree.map(jnp.asarray, p) for p, _ in loaded]
    r = [scorer(p, split) for p in member_params]            # per member: (chosen, rejected)
    wa = jax.tree.map(lambda *xs: sum(xs) / len(xs), *member_params)
    r_wa = scorer(wa, split)
    return {"pairs": len(split["prompt"]), "truncated_prompts": summary.truncated_prompts,
            "truncated_responses": summary.truncated_responses,
            **compare(r, r_wa, uwo_lambda)}


def compare(member_rewards, wa_rewards, uwo_lambda: float = 0.5, best: int | None = None) -> dict:
    """From per-member and WA (chosen, rejected) rewards of the same pairs: each one's accuracy
    (members, WA, ENS, WCO, UWO), the paired intervals of WA − ENS and WA − best member (`best`:
    chosen elsewhere, e.g. on validation pairs; default the best on these pairs, which flatters
    it) and the correlation of WA's and ENS's reward margins over the pairs."""
    from warm_jax.average.rewards import aggregate
    rc_MxN = np.stack([np.asarray(c) for c, _ in member_rewards])
    rr_MxN = np.stack([np.asarray(x) for _, x in member_rewards])
    correct = {f"member_{i}": (c > x).astype(float) for i, (c, x) in
               enumerate(zip(rc_MxN, rr_MxN))}
    correct["WA"] = (np.asarray(wa_rewards[0]) > np.asarray(wa_rewards[1])).astype(float)
    for kind in ("ens", "wco", "uwo"):
        c = np.asarray(aggregate(rc_MxN, kind, uwo_lambda))
        x = np.asarray(aggregate(rr_MxN, kind, uwo_lambda))
        correct[kind.upper()] = (c > x).astype(float)
    best = (f"member_{best}" if best is not None else
            max((k for k in correct if k.startswith("member_")), key=lambda k: correct[k].mean()))
    margin_wa = np.asarray(wa_rewards[0]) - np.asarray(wa_rewards[1])
    margin_ens = (rc_MxN - rr_MxN).mean(0)
    corr = float(np.corrcoef(margin_wa, margin_ens)[0, 1]) if margin_wa.size > 1 else None
    return {"accuracy": {k: float(v.mean()) for k, v in correct.items()},
            "wa_ens_margin_correlation": corr,
            "accuracy_ci": {k: interval(v)["ci"] for k, v in correct.items()},
            "wa_minus_ens": interval(correct["WA"] - correct["ENS"]),
            "wa_minus_best_member": dict(interval(correct["WA"] - correct[best]), member=best)}


def verdict_line(name: str, d: dict) -> str:
    lo, hi = d["ci"]
    if d.get("bound") is not None:
        verdict = (f"inconclusive; alike on all {d['pairs']} pairs, so |difference| < "
                   f"{d['bound']:.4f} (95%): a difference that large would take about "
                   f"{d['pairs_needed_at_bound']} pairs to decide, a smaller one more")
    elif lo > 0 or hi < 0:
        verdict = "WA better" if lo > 0 else "WA worse"
    else:
        verdict = (f"inconclusive; ~{d['pairs_needed']} pairs would decide it at this effect"
                   if d["pairs_needed"] else "inconclusive")
    return f"{name:22s} {d['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]  {verdict}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m warm_jax.average.evaluate",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", help="preference file (.jsonl / .jsonl.gz; the formats of "
                                  "warm_jax.data.inspect)")
    ap.add_argument("members", nargs="+", help="reward models: HF directories or checkpoints")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the first member's)")
    ap.add_argument("--max_prompt_len", type=int, default=256)
    ap.add_argument("--max_response_len", type=int, default=128)
    ap.add_argument("--limit", type=int, default=None, help="the first N pairs only")
    a = ap.parse_args(argv)
    try:
        out = evaluate(a.pairs, a.members, tokenizer=a.tokenizer, limit=a.limit,
                       max_prompt_len=a.max_prompt_len, max_response_len=a.max_response_len)
    except (ValueError, OSError) as e:
        print(f"python -m warm_jax.average.evaluate: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{out['pairs']} pairs ({out['truncated_prompts']} prompts and "
          f"{out['truncated_responses']} responses truncated)")
    for k, v in out["accuracy"].items():
        lo, hi = out["accuracy_ci"][k]
        print(f"accuracy {k:13s} {v:.4f} [{lo:.4f}, {hi:.4f}]")
    print(verdict_line("WA - ENS", out["wa_minus_ens"]))
    print(verdict_line(f"WA - best ({out['wa_minus_best_member']['member']})",
                out["wa_minus_best_member"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
