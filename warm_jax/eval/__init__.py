"""Evaluation: control reward, win rates, Pareto fronts, checkpoint selection, Gao et al. fits."""
