"""Generate docs/hooks.md, the hook reference, from the hookspec docstrings.

    python scripts/hook_reference.py > docs/hooks.md

tests/plugins/test_meta.py fails when docs/hooks.md is out of date.
"""

from __future__ import annotations

import inspect
import re
import sys

from sae_audit import hookspecs
from sae_audit.hookspecs import PROJECT_NAME, hook_names

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc):`~?([^`]+)`")
_SECTIONS = {"Args:": "Arguments", "Returns:": "Returns", "Raises:": "Raises"}


def docstring_markdown(doc: str) -> str:
    """A Google-style docstring as Markdown: reST roles and double backquotes become code,
    ``Args:`` entries become a list of arguments."""
    text = _ROLE.sub(r"``\1``", inspect.cleandoc(doc)).replace("``", "`")
    out: list[str] = []
    section = None
    for line in text.splitlines():
        if line.strip() in _SECTIONS:
            section = line.strip()
            out += [f"**{_SECTIONS[section]}**", ""]
            continue
        if section and line.startswith("    "):
            body = line[4:]
            if section == "Args:" and not body.startswith(" ") and re.match(r"^\w+: ", body):
                name, rest = body.split(": ", 1)
                out.append(f"- `{name}`: {rest}")
            else:
                out.append(("  " if section == "Args:" else "") + body.strip())
            continue
        if line.strip() == "":
            section = None
        out.append(line)
    return "\n".join(out).strip()


def signature(fn) -> str:
    """``(arg: Type, ...) -> Return`` as written in the hookspec (annotations are strings there)."""
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" if p.annotation is not p.empty else p.name
                       for p in sig.parameters.values())
    ret = "" if sig.return_annotation is sig.empty else f" -> {sig.return_annotation}"
    return f"({params}){ret}"


def hook_reference() -> str:
    """``docs/hooks.md``: the hook reference, generated from the hookspec docstrings."""
    lines = [
        "# Hook reference",
        "",
        "<!-- Generated from sae_audit/hookspecs.py by `python scripts/hook_reference.py > docs/hooks.md`;",
        "     tests/plugins/test_meta.py fails when this file is out of date. -->",
        "",
        docstring_markdown(hookspecs.__doc__ or ""),
        "",
        "How to write, package and test a plugin, step by step: [plugins.md](plugins.md).",
        "",
    ]
    for name in hook_names():
        fn = getattr(hookspecs, name)
        opts = getattr(fn, PROJECT_NAME + "_spec", {}) or {}
        flags = " (first result wins)" if opts.get("firstresult") else ""
        lines += [f"## `{name}{signature(fn)}`{flags}", "", docstring_markdown(fn.__doc__ or ""), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        print("usage: python scripts/hook_reference.py > docs/hooks.md", file=sys.stderr)
        return 2
    sys.stdout.write(hook_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
