"""Orbax checkpoints: train state + JSON metadata (data-iterator state, config, base fingerprint).

Each step directory holds two items: `state` (the array pytree, restored straight into a target that
carries shardings) and `meta` (JSON). Orbax commits a step atomically (temporary directory, then
rename), so a crash never leaves a partial checkpoint that `latest_step` would return; the
temporary directories a kill leaves behind are removed when a writer next opens the directory.
Nothing non-finite is ever saved: `save` checks every float leaf first. No pickle.

Arrays are written without orbax's default zstd: trained float32 weights compress by ~7%, and
decoding them was the largest cost of averaging M checkpoints on a 2-core CPU; raw arrays can also
be averaged straight from the files (`warm_jax.average.rawread`). Compressed checkpoints, older
ones included, still restore: the codec is recorded per array.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from warm_jax.fileio import kill_point


class NonFiniteError(FloatingPointError):
    """A NaN/Inf where a number must be finite; the message names the stage, the step and the last
    good checkpoint, which is left intact."""


class _DropItemMetadataNoise(logging.Filter):
    """Reading array metadata of one item (below its step) makes orbax warn that the step-level
    metadata file is not there; it is not meant to be."""

    def filter(self, record):
        return "Metadata file does not exist" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropItemMetadataNoise())

ASSIGN_ALL: tuple[tuple[str, str | None], ...] = ((r"(.*)", r"\1"),)


def path_str(path) -> str:
    """'body/layer_0/attn/wq' for a jax key path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def flatten(tree: Any) -> dict[str, Any]:
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def fingerprint(params: Any) -> str:
    """A hash of every parameter's path, shape, dtype and bytes: the identity of a pretrained base."""
    h = hashlib.sha256()
    for name, x in sorted(flatten(params).items()):
        arr = np.asarray(jax.device_get(x))
        h.update(f"{name}:{arr.shape}:{arr.dtype};".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:20]


def nonfinite_leaves(tree: Any) -> list[str]:
    """Paths of floating-point leaves holding a NaN or an Inf. Host-resident leaves (numpy, or
    single-device CPU arrays) are checked with numpy in slices, with no program to compile;
    the rest in one jitted reduction on their devices."""
    flat = {k: x for k, x in flatten(tree).items()
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)}
    host = {k: x for k, x in flat.items() if _on_host(x)}
    bad = [k for k, x in host.items() if not _host_finite(np.asarray(x))]
    dev = {k: x for k, x in flat.items() if k not in host}
    if dev:
        ok = jax.device_get(_all_finite(dev))
        bad += [k for k, v in ok.items() if not bool(v)]
    return sorted(bad)


def _on_host(x) -> bool:
    if isinstance(x, np.ndarray):
        return True
    return (isinstance(x, jax.Array) and x.is_fully_addressable and len(x.devices()) == 1
            and next(iter(x.devices())).platform == "cpu")


def _host_finite(x: np.ndarray, block: int = 1 << 22) -> bool:
    flat = x.reshape(-1)
    if flat.dtype.itemsize < 4 or flat.dtype.kind != "f":  # bfloat16 & co: numpy lacks isfinite
        flat = flat.astype(np.float32)
    return all(np.isfinite(flat[i:i + block]).all() for i in range(0, flat.size, block))


@jax.jit
def _all_finite(tree):
    return jax.tree.map(lambda x: jnp.isfinite(x).all(), tree)


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_tree, shardings)


def _uncompressed_handler() -> ocp.StandardCheckpointHandler:
    """orbax's StandardCheckpointHandler writing raw (not zstd) arrays. Its pytree handler is a
    private attribute; where an orbax version lays it out otherwise, checkpoints stay compressed
    (slower averaging, nothing else changes)."""
    handler = ocp.StandardCheckpointHandler()
    try:
        if hasattr(handler, "_impl"):
            handler._impl = ocp.PyTreeCheckpointHandler(use_compression=False)
    except TypeError:
        pass
    return handler


class Checkpointer:
    """A thin, synchronous CheckpointManager wrapper over a `state` pytree and a `meta` dict."""

    def __init__(self, directory: str, *, max_to_keep: int | None = 3, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        if read_only and not os.path.isdir(self.directory):
            raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")
        # a reader opens without creating; orbax's own read_only mode only adds log noise
        options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else max_to_keep,
                                               create=not read_only,
                                               enable_async_checkpointing=False,
                                               cleanup_tmp_directories=not read_only)
        self._mngr = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": _uncompressed_handler(), "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def save(self, step: int, state: Any, meta: dict | None = None) -> None:
        """Commit `state` + `meta` as `step`; refuses non-finite values (nothing is written)."""
        bad = nonfinite_leaves(state)
        if bad:
            raise NonFiniteError(
                f"refusing to save step {step} to {self.directory}: non-finite values in "
                f"{bad[:5]}; last good checkpoint: {self.latest_step()} (kept)")
        kill_point("checkpoint.save")
        self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta or {})),
                        force=True)
        self._mngr.wait_until_finished()

    def restore(self, step: int | None = None, target: Any = None) -> tuple[Any, dict]:
        """Restore (state, meta). `target`: an abstract tree (ShapeDtypeStructs with shardings)."""
        step = self._resolve(step)
        state_args = ocp.args.StandardRestore(target) if target is not None else \
            ocp.args.StandardRestore()
        out = self._mngr.restore(step, args=ocp.args.Composite(state=state_args,
                                                               meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"] or {})

    def restore_meta(self, step: int | None = None) -> dict:
        step = self._resolve(step)
        out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"] or {})

    def array_metadata(self, step: int | None = None) -> Any:
        """Shapes and dtypes of the `state` arrays, read from metadata alone (nothing loaded)."""
        meta = ocp.PyTreeCheckpointer().metadata(self.item_dir(step, "state"))
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype)), tree)

    def restore_subset(self, step: int | None, target: Any) -> Any:
        """Restore only the leaves of `target` that are ShapeDtypeStructs (with shardings); leaves
        set to `ocp.PLACEHOLDER` are skipped, so a model can be read a slice at a time."""
        def args(x):
            if x is ocp.PLACEHOLDER:
                return x
            sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(
                jax.local_devices()[0])  # this process's own device, also under jax.distributed
            return ocp.ArrayRestoreArgs(sharding=sharding, dtype=x.dtype)
        is_ph = lambda x: x is ocp.PLACEHOLDER  # noqa: E731
        restore_args = jax.tree.map(args, target, is_leaf=is_ph)
        return ocp.PyTreeCheckpointer().restore(
            self.item_dir(step, "state"),
            args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))

    def item_dir(self, step: int | None, item: str) -> str:
        """The directory of one item (`state`, `meta`) of a committed step (None: the latest)."""
        return os.path.join(self.directory, str(self._resolve(step)), item)

    def _resolve(self, step):
        if step is None:
            step = self.latest_step()
        if step is None or step not in self._mngr.all_steps():
            raise FileNotFoundError(f"no checkpoint at step {step} in {self.directory} "
                                    f"(have {self.all_steps()})")
        return step

    def close(self):
        self._mngr.close()


def restore_params(directory: str, step: int | None = None, shardings: Any = None
                   ) -> tuple[Any, dict]:
    """The `params` of a checkpoint of any stage, placed by `shardings` (a params-shaped tree, or
    a callable path -> sharding); by default on the first local device, whatever mesh saved it."""
    ck = Checkpointer(directory, read_only=True)
    step = ck.latest_step() if step is None else step
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if shardings is None:
        pick = lambda path: default  # noqa: E731
    elif callable(shardings):
        pick = shardings
    else:
        flat = {"params/" + k: v for k, v in flatten(shardings).items()}
        pick = lambda path: flat.get(path, default)  # noqa: E731
    target = jax.tree_util.tree_map_with_path(
        lambda p, m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=pick(path_str(p))),
        ck.array_metadata(step))
    state, meta = ck.restore(step, target)
    return state["params"], meta


def assign_with_fallback(source: Any, target_init: Any,
                         assignment_map: Sequence[tuple[str, str | None]] = ASSIGN_ALL
                         ) -> tuple[Any, list[str]]:
    """Fill `target_init`'s leaves from `source` by regex over paths; keep the init where unmapped.

    Each (pattern, replacement) is tried in order on the target path; the first full match names the
    source path (`None` means: keep the fresh init). A target path whose source is absent keeps its
    fresh init (t5x `fallback_to_scratch`): that is how a reward head lands on an SFT body. A present
    source with a different shape or dtype is an error, never a silent re-init.
    Returns (tree, paths initialised from scratch).
    """
    src = flatten(source)
    fresh: list[str] = []

    def pick(path, init_leaf):
        name = path_str(path)
        for pattern, repl in assignment_map:
            if re.fullmatch(pattern, name):
                src_name = None if repl is None else re.sub(pattern, repl, name)
                break
        else:
            src_name = None
        if src_name is None or src_name not in src:
            fresh.append(name)
            return init_leaf
        leaf = src[src_name]
        if tuple(leaf.shape) != tuple(init_leaf.shape) or leaf.dtype != init_leaf.dtype:
            raise ValueError(f"assignment {src_name} -> {name}: source {leaf.shape} {leaf.dtype} "
                             f"does not fit target {init_leaf.shape} {init_leaf.dtype}")
        if hasattr(init_leaf, "sharding"):
            from warm_jax.sharding import place
            return place(leaf, init_leaf.sharding)
        return leaf

    tree = jax.tree_util.tree_map_with_path(pick, target_init)
    return tree, fresh
