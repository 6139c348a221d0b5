"""WARP's checkpoints: each RL run's policy as its own checkpoint, and merges of such
policies read a slice of leaves at a time.

The RL stage saves one stacked state per method (every (α, seed) run along a leading axis, with the
optimiser and value-head state). `export_policies` writes run r's policy alone as an ordinary
`{"params": ...}` checkpoint (`checkpoint.restore_params` reads it) that records its run, step and
base fingerprint. `merge_checkpoints` then merges M such policies around their shared init the way
`warp.merge_policies` does in memory (SLERP of the task vectors δ_m = θ_m − θ_init, or LERP, their
plain average) and writes one LITI point θ_η = (1 − η)·θ_init + η·θ_merge per η. Both read
`chunk_bytes` of leaves at a time through orbax (`Checkpointer.restore_subset`), so memory is the
outputs plus one slice of the inputs, never M whole policies. SLERP is per parameter tensor, so a
leaf-wise merge is exact: the result equals the in-memory merge (tested).
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from warm_jax.average.hostsum import leaf_chunks
from warm_jax.checkpoint import Checkpointer, flatten, path_str
from warm_jax.rl import warp


class MergeError(ValueError):
    """Policies that cannot be exported or merged (says which and why); nothing is written."""


def _subset(ck: Checkpointer, step: int, template, keep: set[str]) -> dict[str, jax.Array]:
    target = jax.tree_util.tree_map_with_path(
        lambda p, x: x if path_str(p) in keep else ocp.PLACEHOLDER, template)
    return {k: v for k, v in flatten(ck.restore_subset(step, target)).items() if k in keep}


def _unflatten(template, values: dict[str, jax.Array]):
    return jax.tree_util.tree_map_with_path(lambda p, _: values[path_str(p)], template)


def export_policies(rl_checkpoints: str, out_root: str, *, step: int | None = None,
                    chunk_bytes: int = 128 << 20) -> list[str]:
    """Write each run of a stacked RL checkpoint as `out_root/run_<r>` ({"params": policy}),
    committed whole by orbax; a run already exported at this step is kept. Returns the paths in
    run order (the RL meta's `runs`: (α, seed) pairs)."""
    try:
        ck = Checkpointer(rl_checkpoints, read_only=True)
        step = ck.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError("no committed step")
        meta = ck.restore_meta(step)
        full = ck.array_metadata(step)
    except Exception as e:  # noqa: BLE001 - name the checkpoint whatever broke
        raise MergeError(f"RL checkpoint {rl_checkpoints} is missing or unreadable: {e}") from None
    if not isinstance(full, dict) or "policy" not in full:
        raise MergeError(f"{rl_checkpoints}: step {step} holds no `policy` (an RL stage's state "
                         f"has one; found {sorted(full) if isinstance(full, dict) else full})")
    runs = meta.get("runs") or []
    policy = {"policy": full["policy"]}
    leaves = flatten(policy)
    n_runs = {x.shape[0] if x.shape else None for x in leaves.values()}
    if len(n_runs) != 1 or n_runs != {len(runs)}:
        raise MergeError(f"{rl_checkpoints}: the policy's leading axes {sorted(map(str, n_runs))} "
                         f"do not match the {len(runs)} runs its meta lists")
    outs = []
    for r, (alpha, seed) in enumerate(runs):
        out = os.path.join(out_root, f"run_{r}")
        outs.append(out)
        if os.path.isdir(out) and Checkpointer(out, read_only=True).latest_step() == step:
            continue
        params: dict[str, jax.Array] = {}
        for chunk in leaf_chunks(leaves, chunk_bytes):  # all runs' rows of a slice of leaves
            got = _subset(ck, step, full, set(chunk))
            params.update({k[len("policy/"):]: np.asarray(v[r]) for k, v in got.items()})
            del got
        tree = _unflatten(full["policy"], params)
        Checkpointer(out, max_to_keep=1).save(step, {"params": tree}, {
            "base_fingerprint": meta.get("base_fingerprint"), "method": meta.get("method"),
            "alpha": alpha, "seed": seed, "run": r, "rl_step": step,
            "source": os.path.abspath(rl_checkpoints)})
    return outs


def merge_checkpoints(init_dir: str, member_dirs: Sequence[str], outs: dict[float, str], *,
                      how: str = "slerp", chunk_bytes: int = 128 << 20) -> dict[float, str]:
    """θ_η = (1 − η)·θ_init + η·(θ_init + merge of δ_m = θ_m − θ_init) for each {η: out_dir}:
    `how` = 'slerp' (iterated, λ = 1/m: `warp.slerp_many`) or 'lerp' (the plain average). Members
    and init must share every params leaf's shape and dtype and, where recorded, the base
    fingerprint; otherwise a MergeError names the first difference before anything is written."""
    if how not in ("slerp", "lerp"):
        raise MergeError(f"merge_checkpoints: how={how!r}; allowed 'slerp', 'lerp'")
    if not member_dirs:
        raise MergeError("merge_checkpoints: no policies to merge")
    for eta in outs:
        if not 0.0 <= float(eta) <= 1.0:
            raise MergeError(f"merge_checkpoints: LITI η={eta} out of range [0, 1]")
    opened = []
    for d in (init_dir, *member_dirs):
        try:
            ck = Checkpointer(d, read_only=True)
            step = ck.latest_step()
            if step is None:
                raise FileNotFoundError("no committed step")
            opened.append((d, ck, step, ck.restore_meta(step), ck.array_metadata(step)))
        except Exception as e:  # noqa: BLE001 - name the checkpoint whatever broke
            raise MergeError(f"policy {d} is missing or unreadable: {e}") from None
    _, init_ck, init_step, init_meta, init_tree = opened[0]
    if not isinstance(init_tree, dict) or "params" not in init_tree:
        raise MergeError(f"{init_dir} holds no `params`")
    template = {"params": init_tree["params"]}
    ref = flatten(template)
    fp = init_meta.get("base_fingerprint")
    for d, _, _, meta, tree in opened[1:]:
        other = flatten({"params": tree.get("params", {})} if isinstance(tree, dict) else {})
        if set(other) != set(ref):
            raise MergeError(f"policy {d}: parameter tree differs from the init {init_dir} "
                             f"(paths {sorted(set(other) ^ set(ref))[:5]})")
        for k, x in ref.items():
            if tuple(other[k].shape) != tuple(x.shape) or other[k].dtype != x.dtype:
                raise MergeError(f"policy {d}: {k} is {other[k].shape} {other[k].dtype}, but "
                                 f"{x.shape} {x.dtype} in the init {init_dir}")
        if fp is not None and meta.get("base_fingerprint") not in (None, fp):
            raise MergeError(f"policy {d} descends from base {meta.get('base_fingerprint')}, the "
                             f"init {init_dir} from {fp}: a merge needs one shared init")
    values: dict[float, dict[str, jax.Array]] = {eta: {} for eta in outs}
    for chunk in leaf_chunks(ref, chunk_bytes):
        keep = set(chunk)
        # full trees as targets: an SFT or RL checkpoint also holds optimiser state (skipped)
        init = _subset(init_ck, init_step, init_tree, keep)
        members = [_subset(ck, step, tree, keep) for _, ck, step, _, tree in opened[1:]]
        for k in chunk:
            deltas = [warp.task_vector(m[k], init[k]) for m in members]
            merged = (warp.slerp_many(deltas) if how == "slerp"
                      else jax.tree.map(lambda *d: sum(d) / len(d), *deltas))
            theta = (init[k] + merged).astype(init[k].dtype)
            for eta in outs:
                values[eta][k] = np.asarray(warp.liti(init[k], theta, float(eta)))
        del init, members
    for eta, out in outs.items():
        Checkpointer(out, max_to_keep=1).save(0, _unflatten(template, values[eta]), {
            "base_fingerprint": fp, "method": f"warp_{how}", "eta": float(eta),
            "init": os.path.abspath(init_dir),
            "members": [os.path.abspath(d) for d in member_dirs]})
    return dict(outs)
