"""What a launch checks before any stage runs, each problem one line naming what the user typed.

* the gin files and bindings parse (a missing file, an unknown configurable or parameter, a syntax
  error), and every macro they set is read by some binding (`SEDE = 3` is a typo of `SEED`);
* every stage of `warm_jax.run.stages` builds its config (`checks.ConfigError` and the configs'
  own range checks), under the stage's gin scope, so a bad RL value fails in seconds, not after
  the reward models have trained;
* the work directory can be one.

`UsageError` carries the line; `warm_jax.main` prints it and exits 2. Nothing here writes.
"""
from __future__ import annotations

import copy
import difflib
import glob
import os
import re
from typing import Any, Sequence

import gin

from warm_jax.checks import ConfigError


class UsageError(Exception):
    """A launch the user must fix; the message is the whole story, in one line."""


def one_line(text: str) -> str:
    return " | ".join(ln.strip() for ln in str(text).strip().splitlines() if ln.strip())


def parse(files: Sequence[str], bindings: Sequence[str], search_path: Sequence[str]) -> None:
    for p in search_path:
        gin.add_config_file_search_path(p)
    try:
        gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=False)
    except OSError as e:   # gin: "Unable to open file: X. Searched config paths: [...]"
        raise UsageError(f"gin file not found: {one_line(e)}") from None
    except (ValueError, SyntaxError, TypeError, KeyError) as e:
        raise UsageError(f"gin: {one_line(e)}") from None


def _config() -> dict:
    # gin keeps every binding in this table; there is no public way to list them all
    return gin.config._CONFIG


def _macro_refs(value: Any, out: set) -> None:
    if isinstance(value, gin.config.ConfigurableReference):
        if value.selector == "gin.macro":
            out.add(value.scoped_selector.rsplit("/", 1)[0])
        return
    if isinstance(value, dict):
        for v in value.values():
            _macro_refs(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _macro_refs(v, out)


def macros() -> dict[str, Any]:
    """{name: value} of every macro the parsed files and bindings set."""
    return {scope: params.get("value") for (scope, selector), params in _config().items()
            if selector == "gin.macro"}


def check_macros() -> None:
    """Refuse a macro that no binding reads, suggesting the closest one that is read."""
    read: set = set()
    for params in _config().values():
        for v in params.values():
            _macro_refs(v, read)
    unread = sorted(set(macros()) - read)
    if unread:
        name = unread[0]
        close = difflib.get_close_matches(name, sorted(read), n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; known macros: {', '.join(sorted(read))}"
        raise UsageError(f"macro {name} is set but nothing reads it{hint}")


def _binding_of(scope: str, owner: str, field: str, value: Any = None) -> str:
    """How the user set `owner.field`: `MACRO = value` if through a macro, else the binding itself
    (`scope/warm_jax.Owner.field`). The stage's scope is tried first, then any other scope whose
    binding holds the refused value (a config nested under its own scope, `@pretrain/...()`)."""
    base = field.split("[")[0].split(".")[0]
    others = sorted({sc for sc, sel in _config() if sel == f"warm_jax.{owner}"} - {scope, ""})
    found = []
    for sc in ([scope] if scope else []) + [""] + others:
        params = _config().get((sc, f"warm_jax.{owner}"), {})
        if base not in params:
            continue
        v = params[base]
        name = f"{sc + '/' if sc else ''}warm_jax.{owner}.{base}"
        refs: set = set()
        _macro_refs(v, refs)
        if len(refs) == 1 and isinstance(v, gin.config.ConfigurableReference):
            m = next(iter(refs))
            found.append((sc, macros().get(m), f"{m} = {macros().get(m)!r} (read as {name})"))
        else:
            found.append((sc, v, f"{name} = {v!r}"))
    for sc, v, text in found:
        if value is not None and v == value:
            return text
    for sc, v, text in found:
        if sc in (scope, ""):
            return text
    return f"{owner}.{field} (its default)"


_OWNER_FIELD = re.compile(r"^(?:stage \w+: )?([A-Z]\w*)\.([\w\[\]\.]+)[= ]")


def explain(e: Exception, scope: str = "") -> str:
    """One line for a config's refusal, naming the binding or macro the user typed."""
    if isinstance(e, ConfigError):
        return f"{_binding_of(scope, e.owner, e.field, e.value)}: {e.allowed}"
    m = _OWNER_FIELD.match(str(e))
    if m:
        return f"{_binding_of(scope, m.group(1), m.group(2))}: {one_line(e)}"
    return one_line(e)


def stage_refs() -> dict[str, Any]:
    """{stage name: gin reference} of `warm_jax.run.stages` (a list names stages by function)."""
    try:
        stages = gin.get_bindings("warm_jax.run", resolve_references=False).get("stages")
    except (ValueError, KeyError):
        stages = None
    if stages is None:
        raise UsageError("no stages: warm_jax.run.stages is not bound (give an experiment with "
                         "--gin_file=experiments/<name>.gin; --help lists them)")
    if isinstance(stages, dict):
        return dict(stages)
    return {getattr(r, "selector", str(r)).rsplit(".", 1)[-1]: r for r in stages}


def check_stage_configs() -> dict[str, Any]:
    """Build every stage's `cfg` (and `model_cfg`) under the stage's scope; {stage: cfg}."""
    out = {}
    for name, ref in stage_refs().items():
        if not isinstance(ref, gin.config.ConfigurableReference):
            continue
        scope = "/".join(ref.scopes)
        params = gin.get_bindings(ref.scoped_selector, resolve_references=False)
        for key in ("model_cfg", "cfg"):
            if key not in params:
                continue
            try:
                with gin.config_scope(scope or None):
                    value = copy.deepcopy(params[key])   # evaluates @Config() under the scope
            except (ValueError, TypeError) as e:
                raise UsageError(f"stage {name}: {explain(e, scope)}") from None
            if key == "cfg":
                out[name] = value
    return out


def check_workdir(root: str) -> None:
    """The work directory exists as a writable directory, or can be made (nothing is made)."""
    if not isinstance(root, str) or not root:
        raise UsageError(f"WORKDIR = {root!r}: a directory path")
    if os.path.exists(root):
        if not os.path.isdir(root):
            raise UsageError(f"WORKDIR = {root!r}: is a file, not a directory")
        if not os.access(root, os.W_OK | os.X_OK):
            raise UsageError(f"WORKDIR = {root!r}: is not writable")
        return
    parent = os.path.dirname(os.path.abspath(root))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"WORKDIR = {root!r}: cannot be created ({parent} is not a writable "
                         "directory)")


def make_workdir(root: str) -> None:
    """Make the work directory (the launch's one write before its first stage), or refuse."""
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise UsageError(f"WORKDIR = {root!r}: cannot be created ({e.strerror})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise UsageError(f"WORKDIR = {root!r}: is not writable")


def workdir() -> str:
    try:
        value = gin.query_parameter("warm_jax.run.workdir")
        return copy.deepcopy(value)   # a macro reference evaluates to its value
    except ValueError:
        raise UsageError("WORKDIR is not set (--gin.WORKDIR=\"'runs/x'\")") from None


def help_text(gin_dir: str) -> str:
    """The experiments (each file's first comment line) and the macros the demo sets."""
    lines = ["usage: python -m warm_jax.main --gin_file=experiments/<name>.gin "
             "[--gin_file=...] [--gin.NAME=VALUE ...] [--traceback]", "",
             "experiments (gin/experiments/):"]
    for path in sorted(glob.glob(os.path.join(gin_dir, "experiments", "*.gin"))):
        with open(path, encoding="utf-8") as f:
            first = next((ln[1:].strip() for ln in f if ln.startswith("#")), "")
        lines.append(f"  {os.path.relpath(path, gin_dir):<34} {first}")
    lines += ["", "common macros (their values in experiments/demo.gin):"]
    with open(os.path.join(gin_dir, "experiments", "demo.gin"), encoding="utf-8") as f:
        for ln in f:
            m = re.match(r"^([A-Z][A-Z0-9_]*) = (.*)$", ln.rstrip())
            if m:
                lines.append(f"  {m.group(1):<16} {m.group(2)}")
    lines += ["", "flags: --gin_file (repeatable), --gin.NAME=VALUE or --gin_bindings='NAME = VALUE',",
              "       --gin_search_path, --traceback (or WARM_JAX_TRACEBACK=1): tracebacks for "
              "debugging", "a bad value stops the launch with one line and exit status 2, before "
              "any stage runs"]
    return "\n".join(lines)
