"""Best-of-N against a reward function, scored by the oracle with the unbiased estimator.

For n ≤ N, the expected control reward of the proxy-argmax of a uniformly random n-subset of the N
samples of a prompt is Σ_i C(i, n−1)/C(N, n) · gold_(i), samples sorted by proxy reward ascending
(i counts from 0): the i-th smallest is the subset's maximum iff the other n−1 come from the i
below it (Nakano et al. 2021; Coste et al. 2023). KL_bon(n) = log n − (n−1)/n.
"""
from __future__ import annotations

import math

import numpy as np


def kl_bon(n: int) -> float:
    return math.log(n) - (n - 1) / n


def bon_weights(N: int, n: int) -> np.ndarray:
    if not 1 <= n <= N:
        raise ValueError(f"n={n} is out of range: allowed [1, N={N}]")
    total = math.comb(N, n)
    return np.array([math.comb(i, n - 1) / total for i in range(N)])


def bon_expectation(proxy_PxN: np.ndarray, gold_PxN: np.ndarray, n: int) -> float:
    """Mean over prompts of the expected gold reward of best-of-n selection by the proxy.
    Proxy ties go to the earlier sample, as np.argmax picks the first maximum."""
    proxy_PxN, gold_PxN = np.asarray(proxy_PxN, np.float64), np.asarray(gold_PxN, np.float64)
    # ascending by proxy; among equal proxies the earlier index sorts last (ranks highest)
    order = np.lexsort((-np.arange(proxy_PxN.shape[1])[None].repeat(len(proxy_PxN), 0),
                        proxy_PxN), axis=-1)
    g_sorted = np.take_along_axis(gold_PxN, order, axis=-1)
    return float((g_sorted @ bon_weights(proxy_PxN.shape[1], n)).mean())
