"""Plugins' sub-commands, from the ``sae_audit_register_commands`` hook.

What a plugin registers is checked here, next to the code that uses it.
"""

from __future__ import annotations

import argparse

from sae_audit.plugin_manager import PluginError, PluginManager, Registration, RegistrationError

KIND = "commands"


def _accept(name, configure, run, help) -> tuple:  # noqa: A002 - argparse's word
    """``register(name, configure, run, help)`` (see the hook's documentation)."""
    if not isinstance(name, str) or not name or name.startswith("-") or " " in name:
        raise RegistrationError(f"command name must be one word, got {name!r}")
    for what, fn in (("configure", configure), ("run", run)):
        if not callable(fn):
            raise RegistrationError(f"{what} must be callable, got {type(fn).__name__} {fn!r:.60}")
    if not isinstance(help, str):
        raise RegistrationError(f"help must be a string, got {type(help).__name__}")
    return name, (configure, run), help, ()


def add_plugin_commands(manager: PluginManager, sub) -> None:
    """Add every plugin command to the sub-parsers ``sub``.

    Raises:
        PluginError: a command's name is taken (by sae-audit or another plugin),
            or its ``configure`` failed (the message names the plugin).
    """
    for reg in manager.registrations(KIND, _accept):
        if reg.name in sub.choices:
            raise PluginError(f"command {reg.name!r} is registered twice: by sae-audit itself (built-in) and by "
                              f"{manager.who(reg.plugin)}; uninstall it or leave it out with "
                              "SAE_AUDIT_LOAD_PLUGINS or --no-plugins")
        configure, _ = reg.value
        cmd = sub.add_parser(reg.name, help=f"{reg.description} [plugin {reg.plugin}]", description=reg.description)
        manager.guarded(reg.plugin, f"the configure function of command {reg.name!r} (sae_audit_register_commands)",
                        configure, cmd)
        cmd.set_defaults(func=lambda args, _reg=reg: run_plugin_command(manager, _reg, args))


def run_plugin_command(manager: PluginManager, reg: Registration, args: argparse.Namespace) -> int:
    """Run a plugin command; its exit status.

    Raises:
        PluginError: the command raised something other than :class:`~sae_audit.errors.SaeAuditError`
            or returned something other than an int or ``None``.
    """
    code = manager.guarded(reg.plugin, f"the command {reg.name!r} (sae_audit_register_commands)", reg.value[1], args)
    if code is None:
        return 0
    if not isinstance(code, int) or isinstance(code, bool):
        raise PluginError(f"{manager.who(reg.plugin)}: command {reg.name!r} returned {type(code).__name__}, "
                          "expected an exit status (int) or None")
    return code
