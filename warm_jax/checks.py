"""What every stage's config dataclass shares: the error a bad value raises, and the checks.

Each stage takes one frozen config (`PolicyConfig`, `RMConfig`, ...) validated in `__post_init__`,
so a bad value fails when gin builds the config, which `warm_jax.main` does for every stage before
the first one runs. A `ConfigError` names the config's field, the value and what is allowed; the
entry point turns the field into the gin binding or macro the user typed.

Fields marked `run_only(...)` say how a stage runs (mesh, batch of a scoring pass, an override),
not what it computes: they are left out of the record a stage checks before it resumes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable


class ConfigError(ValueError):
    """`owner.field = value` is not allowed; `allowed` says what is."""

    def __init__(self, owner: str, field: str, value: Any, allowed: str, sep: str = ": "):
        self.owner, self.field, self.value, self.allowed = owner, field, value, allowed
        super().__init__(f"{owner}.{field}={value!r}{sep}{allowed}")


def run_only(default: Any = dataclasses.MISSING, **kw) -> Any:
    """A field that does not change what a stage computes (not part of its recorded config)."""
    return dataclasses.field(default=default, metadata={"run_only": True}, **kw)


def if_set(default: Any) -> Any:
    """A field added after runs were recorded: recorded only when it differs from its default, so
    those runs' recorded configurations still match (and they resume)."""
    return dataclasses.field(default=default, metadata={"record_if_set": True})


def recorded(cfg: Any, drop: Iterable[str] = ()) -> dict:
    """The fields of `cfg` a stage records and checks on resume: all but the run-only ones, `drop`,
    and `if_set` fields at their defaults."""
    drop = set(drop)
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if not f.metadata.get("run_only") and f.name not in drop
            and not (f.metadata.get("record_if_set") and getattr(cfg, f.name) == f.default)}


def fail(cfg: Any, field: str, allowed: str, value: Any = dataclasses.MISSING) -> None:
    raise ConfigError(type(cfg).__name__, field,
                      getattr(cfg, field) if value is dataclasses.MISSING else value, allowed)


def at_least(cfg: Any, low: float, *fields: str) -> None:
    """Each of `fields` is a finite number ≥ `low` (bools excluded)."""
    for f in fields:
        v = getattr(cfg, f)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
            fail(cfg, f, f"a number >= {low:g}")


def integers(cfg: Any, low: int, *fields: str) -> None:
    """Each of `fields` is an integer ≥ `low`."""
    for f in fields:
        v = getattr(cfg, f)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            fail(cfg, f, f"an integer >= {low}")


def optional_integer(cfg: Any, low: int, field: str) -> None:
    if getattr(cfg, field) is not None:
        integers(cfg, low, field)


def one_of(cfg: Any, field: str, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if getattr(cfg, field) not in allowed:
        fail(cfg, field, f"one of {allowed}")


def seeds(cfg: Any, field: str, *, empty_ok: bool = False) -> None:
    """`field` is distinct integers ≥ 0 (at least one unless `empty_ok`); stored as a tuple."""
    v = getattr(cfg, field)
    try:
        out = tuple(v)
    except TypeError:
        fail(cfg, field, "a tuple of distinct integers >= 0")
    if (not empty_ok and not out) or len(set(out)) != len(out) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in out):
        fail(cfg, field, "distinct integers >= 0" + ("" if empty_ok else ", at least one"))
    object.__setattr__(cfg, field, out)


def numbers(cfg: Any, field: str, low: float = 0.0, *, empty_ok: bool = False,
            distinct: bool = True) -> None:
    """`field` is a tuple of finite numbers ≥ `low` (distinct unless told); stored as a tuple."""
    v = getattr(cfg, field)
    try:
        out = tuple(v)
    except TypeError:
        fail(cfg, field, f"a tuple of numbers >= {low:g}")
    ok = all(not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)
             and x >= low for x in out)
    if not ok or (not empty_ok and not out) or (distinct and len(set(out)) != len(out)):
        fail(cfg, field, ("distinct " if distinct else "") + f"finite numbers >= {low:g}"
             + ("" if empty_ok else ", at least one"))
    object.__setattr__(cfg, field, out)


def multiple_of(cfg: Any, field: str, of: str) -> None:
    """`field` is an integer ≥ 1 and a multiple of the field `of` (itself ≥ 1)."""
    integers(cfg, 1, of, field)
    if getattr(cfg, field) % getattr(cfg, of):
        fail(cfg, field, f"a positive multiple of {of}={getattr(cfg, of)}")


def check_range(owner: str, field: str, value: Any, lo: float | None = None,
                hi: float | None = None, *, lo_open: bool = False) -> None:
    """Raise a ConfigError naming `owner.field`, its value and the allowed range."""
    left = "(" if lo_open else "["
    rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(owner, field, value, f"a number in {rng}")
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (
            hi is not None and value > hi):
        raise ConfigError(owner, field, value, f"allowed {rng}", sep=" is out of range: ")
