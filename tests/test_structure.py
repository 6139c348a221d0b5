"""The house's rules, read from the code: the import layers (pyproject.toml's import-linter
contracts), no module reaching into another's `_private` names, and stage signatures of at most
six keyword-only parameters."""
import ast
import inspect
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = pathlib.Path(REPO) / "warm_jax"


def test_the_import_layers_hold():
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    if not os.path.exists(lint):
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    r = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "0 broken" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    assert "2 kept" in r.stdout, r.stdout[-2000:]


def _private_imports(tree: ast.AST, module: str):
    """(line, name) of every `_private` name this module takes from another warm_jax module."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("warm_jax"):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    yield node.lineno, f"{node.module}.{a.name}"
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("warm_jax"):
                    aliases[a.asname or a.name.split(".")[0]] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                and node.value.id in aliases and aliases[node.value.id] != module):
            yield node.lineno, f"{aliases[node.value.id]}.{node.attr}"


def test_no_module_takes_another_modules_private_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"{path.relative_to(REPO)}:{line}: {name}"
                  for line, name in _private_imports(tree, module)]
    assert not found, "\n".join(found)


def test_the_private_name_check_sees_both_forms():
    tree = ast.parse("from warm_jax.eval.claims import _units\nfrom warm_jax import guards\n"
                     "guards._preempt.clear()\n")
    assert [n for _, n in _private_imports(tree, "warm_jax.x")] == [
        "warm_jax.eval.claims._units", "warm_jax.guards._preempt"]


def test_every_stage_takes_at_most_six_keyword_only_parameters():
    from warm_jax.main import STAGES
    assert len(STAGES) >= 10
    for stage in STAGES:
        params = inspect.signature(stage).parameters.values()
        assert len(params) <= 6, (stage.__qualname__, len(params))
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), stage.__qualname__
