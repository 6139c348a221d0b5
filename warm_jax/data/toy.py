"""The embedded task: toy summarisation with a known gold reward (zero downloads, seeded).

A document is 14 tokens mixing a few *salient* tokens among *filler*; the ideal summary lists the
document's salient tokens and ends with EOS. The gold reward pays for coverage and charges for
invented salient tokens (salient, but absent from the document), repeats, filler and a missing EOS.

Reward hacking is built in the way it happens in RLHF: offline responses come from a base policy
whose longer answers tend to cover more salient tokens, so "more salient-looking tokens" is a
shortcut an RM can latch onto; only a small share of the offline pairs (`hack_share`) shows invented
tokens, and their labels are noisier (`hack_temperature`), so each RM learns the penalty for
inventing tokens weakly and differently — a run-specific error, the kind weight averaging removes.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.data.task import SPLITS
from warm_jax.checks import check_range

PAD, EOS, BOS, SEP = 0, 1, 2, 3
FIRST = 4


@dataclasses.dataclass(frozen=True)
class ResponseStyle:
    """A procedural response policy: which salient tokens it keeps and what noise it adds."""
    keep_low: float = 0.3       # per-sample keep probability ~ U(keep_low, keep_high)
    keep_high: float = 1.0
    filler: float = 0.4         # Poisson means of inserted tokens
    invent: float = 0.0
    repeat: float = 0.2
    eos: float = 0.95           # probability of ending with EOS (else runs to the length limit)


STYLES = {
    "demo": ResponseStyle(keep_low=0.8, keep_high=1.0, filler=0.3, invent=0.05, repeat=0.1, eos=0.97),
    "base": ResponseStyle(),
    "hack": ResponseStyle(keep_low=0.5, keep_high=1.0, filler=0.3, invent=1.5, repeat=0.8, eos=0.95),
    "ood": ResponseStyle(keep_low=0.5, keep_high=1.0, filler=1.2, invent=0.6, repeat=0.8, eos=0.85),
    "noise": ResponseStyle(keep_low=0.0, keep_high=1.0, filler=2.0, invent=1.0, repeat=1.0, eos=0.7),
}


@dataclasses.dataclass(frozen=True)
class ToyTaskConfig:
    """Every knob of the toy task. Label noise follows WARM §5 (25% flipped labels when corrupted)."""
    seed: int = 0
    doc_len: int = 14
    n_salient: int = 12
    n_filler: int = 24
    min_salient: int = 2
    max_salient: int = 4
    max_response_len: int = 12
    n_pretrain: int = 20000
    n_sft: int = 4000
    n_rm_train: int = 4000
    n_rm_validation: int = 1000
    n_rm_test: int = 1000
    n_rl_prompts: int = 2000
    n_eval_prompts: int = 256
    labeller_temperature: float = 0.8
    flip_fraction: float = 0.0
    hack_share: float = 0.1
    hack_temperature: float = 3.0
    # where the pretraining loss falls: "all" tokens, or only the "response" after SEP. Documents
    # are random tokens, so on "all" ~3/4 of the loss is irreducible noise that drowns the copying
    # signal: the toy model then sits on a unigram plateau for 1,500–3,000+ steps and leaves it at
    # a seed-dependent step (hence SFT quality swinging with the seed).
    pretrain_loss: str = "all"
    # the chain seed's draw of the training labels (Bradley-Terry draw and flips) over the same
    # training pairs; 0 is the base draw. Evaluation splits do not depend on it (their pairs and
    # labels are shared by every chain seed, so that seeds are compared on the same units).
    label_seed: int = 0

    def __post_init__(self):
        o = "ToyTaskConfig"
        for f in ("doc_len", "n_salient", "n_filler", "max_response_len", "n_pretrain", "n_sft",
                  "n_rm_train", "n_rm_validation", "n_rm_test", "n_rl_prompts", "n_eval_prompts"):
            check_range(o, f, getattr(self, f), 1)
        check_range(o, "min_salient", self.min_salient, 1, self.max_salient)
        check_range(o, "max_salient", self.max_salient, self.min_salient,
                    min(self.n_salient, self.doc_len))
        check_range(o, "max_response_len", self.max_response_len, self.max_salient + 1)
        check_range(o, "labeller_temperature", self.labeller_temperature, 0.0, lo_open=True)
        check_range(o, "flip_fraction", self.flip_fraction, 0.0, 0.5)
        check_range(o, "hack_share", self.hack_share, 0.0, 1.0)
        check_range(o, "hack_temperature", self.hack_temperature, 0.0, lo_open=True)
        check_range(o, "label_seed", self.label_seed, 0)
        if self.pretrain_loss not in ("all", "response"):
            raise ValueError(f"ToyTaskConfig.pretrain_loss={self.pretrain_loss!r}: allowed "
                             "'all' or 'response'")

    @property
    def vocab_size(self) -> int:
        return FIRST + self.n_salient + self.n_filler

    @property
    def prompt_len(self) -> int:
        return self.doc_len + 2  # BOS doc SEP


def gold_reward(prompt_BxP: jax.Array, response_BxR: jax.Array, mask_BxR: jax.Array, *,
                n_salient: int, vocab_size: int) -> jax.Array:
    """The oracle: 2·coverage − invented − 0.5·repeats − 0.3·filler − 1·[no EOS]. Jittable."""
    salient_V = (jnp.arange(vocab_size) >= FIRST) & (jnp.arange(vocab_size) < FIRST + n_salient)
    content_V = jnp.arange(vocab_size) >= FIRST
    doc_BxV = jax.nn.one_hot(prompt_BxP, vocab_size).max(1) > 0
    live_BxR = mask_BxR.astype(bool) & (response_BxR != EOS) & (response_BxR != PAD)
    counts_BxV = (jax.nn.one_hot(response_BxR, vocab_size) * live_BxR[..., None]).sum(1)
    k_B = jnp.maximum((doc_BxV & salient_V).sum(-1), 1)
    covered_B = ((counts_BxV > 0) & doc_BxV & salient_V).sum(-1)
    invented_B = (counts_BxV * (salient_V & ~doc_BxV)).sum(-1)
    repeats_B = (jnp.maximum(counts_BxV - 1, 0) * content_V).sum(-1)
    filler_B = (counts_BxV * (content_V & ~salient_V)).sum(-1)
    has_eos_B = ((response_BxR == EOS) & mask_BxR.astype(bool)).any(-1)
    return (2.0 * covered_B / k_B - 1.0 * invented_B - 0.5 * repeats_B - 0.3 * filler_B
            - 1.0 * (~has_eos_B)).astype(jnp.float32)


class ToyTask:
    """Splits, demonstrations, offline preference pairs and the oracle of the toy task."""

    name = "toy_summarisation"
    has_oracle = True
    splits = SPLITS
    input_layer = 0

    def __init__(self, cfg: ToyTaskConfig = ToyTaskConfig()):
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.pad_id, self.eos_id, self.bos_id = PAD, EOS, BOS
        self.prompt_len, self.max_response_len = cfg.prompt_len, cfg.max_response_len
        self.salient = np.arange(FIRST, FIRST + cfg.n_salient)
        self.filler = np.arange(FIRST + cfg.n_salient, cfg.vocab_size)
        # the oracle as a pure function, for use inside jitted RL steps
        self.gold_fn = lambda p, r, m: gold_reward(p, r, m, n_salient=cfg.n_salient,
                                                   vocab_size=cfg.vocab_size)
        self._gold = jax.jit(self.gold_fn)

    # --- generation ---------------------------------------------------------------------------
    def _rng(self, split: str) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, hash_str(split)])

    def _docs(self, n: int, rng) -> tuple[np.ndarray, list[np.ndarray]]:
        c = self.cfg
        prompts = np.empty((n, c.prompt_len), np.int32)
        keys = []
        for i in range(n):
            k = rng.integers(c.min_salient, c.max_salient + 1)
            sal = rng.choice(self.salient, k, replace=False)
            doc = rng.choice(self.filler, c.doc_len)
            pos = np.sort(rng.choice(c.doc_len, k, replace=False))
            doc[pos] = sal
            prompts[i] = np.concatenate([[BOS], doc, [SEP]])
            keys.append(doc[pos])  # salient tokens in document order
        return prompts, keys

    def _respond(self, key: np.ndarray, style: ResponseStyle, rng) -> list[int]:
        R = self.cfg.max_response_len
        keep = rng.uniform(style.keep_low, style.keep_high)
        toks = [int(t) for t in key if rng.random() < keep]
        absent = np.setdiff1d(self.salient, key)
        for _ in range(rng.poisson(style.invent)):
            toks.insert(rng.integers(len(toks) + 1), int(rng.choice(absent)))
        for _ in range(rng.poisson(style.filler)):
            toks.insert(rng.integers(len(toks) + 1), int(rng.choice(self.filler)))
        for _ in range(rng.poisson(style.repeat) if toks else 0):
            toks.insert(rng.integers(len(toks) + 1), int(rng.choice(toks)))
        toks = toks[:R - 1]
        if rng.random() < style.eos:
            return toks + [EOS]
        while len(toks) < R:
            toks.append(int(rng.choice(np.concatenate([self.filler, key]))))
        return toks

    def _responses(self, keys, style_names, rng) -> tuple[np.ndarray, np.ndarray]:
        R = self.cfg.max_response_len
        toks = np.full((len(keys), R), PAD, np.int32)
        mask = np.zeros((len(keys), R), np.int32)
        for i, (key, s) in enumerate(zip(keys, style_names)):
            r = self._respond(key, STYLES[s], rng)
            toks[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return toks, mask

    # --- the task interface ---------------------------------------------------------------------
    def for_seed(self, seed: int) -> "ToyTask":
        """The task as chain seed `seed` sees it: its own draw of the training labels."""
        return self if seed == self.cfg.label_seed else ToyTask(
            dataclasses.replace(self.cfg, label_seed=int(seed)))

    def gold_reward(self, prompt_BxP, response_BxR, mask_BxR) -> np.ndarray:
        return np.asarray(self._gold(jnp.asarray(prompt_BxP), jnp.asarray(response_BxR),
                                     jnp.asarray(mask_BxR)))

    def prompts(self, split: str) -> np.ndarray:
        # "ood": the prompts of the sampled OOD preference split (warm_jax.ood), as many as test;
        # "pilot": the RL calibration's held-out prompts (warm_jax.rl.calibrate), four times as
        # many as eval (a calibration judges single seeds, not means over seeds), none of them an
        # eval prompt
        n = {"rl": self.cfg.n_rl_prompts, "eval": self.cfg.n_eval_prompts,
             "ood": self.cfg.n_rm_test, "pilot": 4 * self.cfg.n_eval_prompts}
        if split not in n:
            raise ValueError(f"prompt split {split!r} unknown: allowed {sorted(n)}")
        if split != "pilot":
            return self._docs(n[split], self._rng("prompts/" + split))[0]
        held_out = {p.tobytes() for p in self.prompts("eval")}
        drawn = self._docs(2 * n[split] + 16, self._rng("prompts/pilot"))[0]
        return np.stack([p for p in drawn if p.tobytes() not in held_out][:n[split]])

    def pretrain_corpus(self) -> dict[str, np.ndarray]:
        """BOS doc SEP response, responses from every style: a broad 'web' of summaries."""
        rng = self._rng("pretrain")
        prompts, keys = self._docs(self.cfg.n_pretrain, rng)
        styles = rng.choice(list(STYLES), len(keys))
        resp, rmask = self._responses(keys, styles, rng)
        tokens = np.concatenate([prompts, resp], 1)
        mask = np.concatenate([np.ones_like(prompts), rmask], 1)
        if self.cfg.pretrain_loss == "response":
            return {"tokens": tokens, "mask": mask,
                    "loss_mask": np.concatenate([np.zeros_like(prompts), rmask], 1)}
        return {"tokens": tokens, "mask": mask, "loss_mask": mask}

    def sft_demonstrations(self) -> dict[str, np.ndarray]:
        """Good-but-imperfect demonstrations; the loss is on the response only."""
        rng = self._rng("sft")
        prompts, keys = self._docs(self.cfg.n_sft, rng)
        resp, rmask = self._responses(keys, ["demo"] * len(keys), rng)
        tokens = np.concatenate([prompts, resp], 1)
        mask = np.concatenate([np.ones_like(prompts), rmask], 1)
        loss_mask = np.concatenate([np.zeros_like(prompts), rmask], 1)
        return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}

    def preference_split(self, split: str) -> dict[str, np.ndarray]:
        """Offline pairs labelled by the oracle. `train`/`validation` come from the base policy
        (with a `hack_share` of hacky responses), `test` (OOD) from the shifted `ood` policy.
        Keys: prompt, prompt_mask, chosen, chosen_mask, rejected, rejected_mask, flipped,
        gold_margin."""
        n = {"train": self.cfg.n_rm_train, "validation": self.cfg.n_rm_validation,
             "test": self.cfg.n_rm_test}
        if split not in n:
            raise ValueError(f"preference split {split!r} unknown: allowed {sorted(n)}")
        prompts, sa, a, am, b, bm, rng = self._unlabelled_pairs(split)
        if split == "train" and self.cfg.label_seed:
            rng = np.random.default_rng([self.cfg.seed, hash_str("labels/train"), self.cfg.label_seed])
        return self.label_pairs(prompts, a, am, b, bm, rng, flip=split == "train",
                                hard=sa == "hack")

    def _unlabelled_pairs(self, split: str):
        """The split's prompts and response pairs, and the generator as it stands after drawing
        them (the labels draw on from there). Shared by every chain seed's task: a chain seed
        changes only the labels, so the pairs are drawn once per process."""
        label_only = dict(label_seed=0, flip_fraction=0.0, labeller_temperature=1.0,
                          hack_temperature=1.0, n_pretrain=1, n_sft=1, n_rl_prompts=1,
                          n_eval_prompts=1, pretrain_loss="all")
        prompts, sa, a, am, b, bm, state = _pairs_cached(
            dataclasses.replace(self.cfg, **label_only), split)
        rng = np.random.default_rng()
        rng.bit_generator.state = state
        return prompts.copy(), sa, a.copy(), am.copy(), b.copy(), bm.copy(), rng

    def _draw_pairs(self, split: str):
        n = {"train": self.cfg.n_rm_train, "validation": self.cfg.n_rm_validation,
             "test": self.cfg.n_rm_test}[split]
        rng = self._rng("pairs/" + split)
        prompts, keys = self._docs(n, rng)
        if split == "test":
            sa = sb = np.array(["ood"] * len(keys))
        else:
            hacky = rng.random(len(keys)) < self.cfg.hack_share
            sa = np.where(hacky, "hack", "base")
            sb = np.array(["base"] * len(keys))
        a, am = self._responses(keys, sa, rng)
        b, bm = self._responses(keys, sb, rng)
        return prompts, sa, a, am, b, bm, rng.bit_generator.state

    def label_pairs(self, prompts, a, am, b, bm, rng, *, flip: bool, hard=None) -> dict:
        """Bradley–Terry labels from the gold reward at the labeller temperature (hotter on `hard`
        pairs), then a `flip_fraction` of labels swapped (recorded in `flipped`) when `flip`."""
        ga, gb = self.gold_reward(prompts, a, am), self.gold_reward(prompts, b, bm)
        temp = np.full(len(ga), self.cfg.labeller_temperature)
        if hard is not None:
            temp = np.where(hard, temp * self.cfg.hack_temperature, temp)
        a_wins = rng.random(len(ga)) < 1.0 / (1.0 + np.exp(-(ga - gb) / temp))
        flipped = np.zeros(len(ga), bool)
        if flip and self.cfg.flip_fraction > 0:
            flipped[rng.permutation(len(ga))[:int(round(self.cfg.flip_fraction * len(ga)))]] = True
        a_wins ^= flipped
        pick = lambda x, y: np.where(a_wins[:, None], x, y)  # noqa: E731
        return {"prompt": prompts, "prompt_mask": np.ones_like(prompts),
                "chosen": pick(a, b), "chosen_mask": pick(am, bm),
                "rejected": pick(b, a), "rejected_mask": pick(bm, am), "flipped": flipped,
                "gold_margin": np.where(a_wins, ga - gb, gb - ga).astype(np.float32)}

    def decode(self, tokens, mask=None) -> str:
        out = []
        for i, t in enumerate(np.asarray(tokens).tolist()):
            if mask is not None and not mask[i]:
                continue
            out.append({PAD: "_", EOS: "</s>", BOS: "<s>", SEP: "|"}.get(
                t, f"S{t - FIRST}" if t < FIRST + self.cfg.n_salient else
                f"f{t - FIRST - self.cfg.n_salient}"))
        return " ".join(out)


@functools.lru_cache(maxsize=16)
def _pairs_cached(cfg: ToyTaskConfig, split: str):
    return ToyTask(cfg)._draw_pairs(split)


def hash_str(s: str) -> int:
    """A stable (process-independent) hash for seeding per-split generators."""
    h = 2166136261
    for ch in s.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h
