"""Meta-tests: every hookspec is documented in docs/hooks.md (which is generated from the
hookspec docstrings and must be up to date), and every hookspec has a test that calls it."""

from __future__ import annotations

import ast
import inspect
import tomllib
from pathlib import Path

import pytest

from sae_audit import hookspecs
import runpy

from sae_audit.hookspecs import REGISTER_HOOKS, hook_names
from sae_audit.plugin_manager import BUILTIN_MODULE, ENTRY_POINT_GROUP

ROOT = Path(__file__).resolve().parents[2]
HOOKS = hook_names()
hook_reference = runpy.run_path(str(ROOT / "scripts" / "hook_reference.py"))["hook_reference"]


def test_there_are_hooks_of_every_kind():
    assert set(REGISTER_HOOKS.values()) < set(HOOKS)
    assert {"sae_audit_card_metadata", "sae_audit_run_configured", "sae_audit_audit_image_set",
            "sae_audit_run_finished"} < set(HOOKS)
    assert all(h.startswith("sae_audit_") for h in HOOKS)


def test_hook_reference_is_generated_from_the_docstrings():
    assert (ROOT / "docs" / "hooks.md").read_text() == hook_reference(), (
        "docs/hooks.md is out of date: run python scripts/hook_reference.py > docs/hooks.md"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook))
    assert doc and "Called" in doc and "Returns:" in doc, f"{hook}: say when it is called and what it returns"
    if inspect.signature(getattr(hookspecs, hook)).parameters:
        assert "Args:" in doc
        for arg in inspect.signature(getattr(hookspecs, hook)).parameters:
            assert f"    {arg}: " in doc, f"{hook}: argument {arg!r} is not described"
    reference = (ROOT / "docs" / "hooks.md").read_text()
    assert f"## `{hook}(" in reference


def _test_functions() -> dict[str, ast.FunctionDef]:
    tree = ast.parse((ROOT / "tests" / "plugins" / "test_hooks.py").read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    tests = _test_functions()
    assert f"test_hook_{hook}" in tests, f"tests/plugins/test_hooks.py needs test_hook_{hook}"


def test_no_test_for_a_hook_that_does_not_exist():
    stale = [n for n in _test_functions() if n.startswith("test_hook_") and n[len("test_hook_"):] not in HOOKS]
    assert stale == []


def test_builtin_plugin_is_listed_under_the_entry_point_group():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"][ENTRY_POINT_GROUP] == {"builtin": BUILTIN_MODULE}


def test_first_party_plugins_are_shaped_like_third_party_ones():
    for folder in sorted((ROOT / "plugins").iterdir()):
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
        eps = project["entry-points"][ENTRY_POINT_GROUP]
        assert eps, folder
        for target in eps.values():
            module = target.split(":")[0]
            assert (folder / "src" / Path(*module.split("."))).with_suffix(".py").is_file(), target
        assert any(d.startswith("sae-audit") for d in project["dependencies"])
        assert list((folder / "tests").glob("test_*.py")), f"{folder.name} has no tests"
