"""The plugin manager: loads plugins, isolates their failures, and calls their hooks.

Plugins are modules (or objects) implementing hooks from
:mod:`sae_audit.hookspecs`, listed under the ``sae_audit`` entry-point group
of their distribution::

    [project.entry-points.sae_audit]
    corruptions = "sae_audit_corruptions"

sae-audit's own families, formats, image sets, suites and report sections
come from :mod:`sae_audit.builtin_plugin`, which is loaded first and takes the
same path as any other plugin.

This module knows nothing about models, SAEs or image sets. It

- loads plugins one at a time (:meth:`PluginManager.load_entry_points`): a
  plugin that fails to import (any exception, ``SystemExit`` included),
  implements a hook that does not exist (a misspelt name), declares arguments
  a hook does not have, or whose register hooks raise or return a value is
  *reported* (a logged warning naming it; ``sae-audit plugins`` lists it) and
  left out, and everything else goes on;
- records what each plugin's register hooks pass to ``register(...)``, so that
  each domain builds and checks its own registry from those calls
  (:meth:`PluginManager.registrations`; e.g. :func:`sae_audit.data.registry.image_sets`);
- calls lifecycle hooks and plugin-provided functions so that a failure names
  the plugin (:meth:`PluginManager.call`, :meth:`PluginManager.guarded`).

Environment:

- ``SAE_AUDIT_STRICT_PLUGINS=1``: a plugin failure raises :class:`PluginError`;
- ``SAE_AUDIT_LOAD_PLUGINS=a,b``: load only these plugins (entry-point or
  distribution names); an empty value loads none but the built-ins, as does
  ``sae-audit --no-plugins``.

The process-wide manager is :func:`get_plugin_manager` (built on first use
from the environment); :func:`use_plugin_manager` swaps it for a block of code
(tests, the CLI's ``--no-plugins``). It is the only global state sae-audit keeps.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as importlib_metadata
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pluggy

from sae_audit import hookspecs
from sae_audit.errors import SaeAuditError
from sae_audit.hookspecs import PROJECT_NAME, REGISTER_HOOKS, hook_names

__all__ = [
    "BUILTIN",
    "BUILTIN_MODULE",
    "ENTRY_POINT_GROUP",
    "ENV_ALLOW",
    "ENV_STRICT",
    "PluginError",
    "PluginFailure",
    "PluginInfo",
    "PluginManager",
    "Registration",
    "RegistrationError",
    "get_plugin_manager",
    "use_plugin_manager",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sae_audit"
#: Plugin name of sae-audit's own plugin.
BUILTIN = "builtin"
#: The built-in plugin, loaded by name before any entry point (as datasette's DEFAULT_PLUGINS),
#: so this module never imports the domain modules it registers.
BUILTIN_MODULE = "sae_audit.builtin_plugin"
ENV_STRICT = "SAE_AUDIT_STRICT_PLUGINS"
ENV_ALLOW = "SAE_AUDIT_LOAD_PLUGINS"


class PluginError(SaeAuditError):
    """A plugin failed: it could not be loaded, it conflicts with another, or it raised in a hook.

    The message names the plugin (and the hook or the other plugin).
    """


class RegistrationError(Exception):
    """Raised by a domain's registry builder for a ``register(...)`` call it cannot accept.

    The message says what is wrong (``"factory must be callable, got str"``); the
    manager leaves the plugin out and reports it by name.
    """


@dataclass(frozen=True)
class Registration:
    """One thing a plugin registered through a ``sae_audit_register_*`` hook, as a domain accepted it.

    Attributes:
        kind: the registry (``"image_sets"``: the hook name without ``sae_audit_register_``).
        name: the registered name (unique across plugins within the kind).
        plugin: the plugin that registered it.
        value: what the domain's registry holds (an adapter, a reader, a factory, ...).
        description: one line for listings.
        keys: further names it answers to (e.g. ``config.model_type`` values); unique too.
    """

    kind: str
    name: str
    plugin: str
    value: Any
    description: str = ""
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Call:
    args: tuple
    kwargs: dict


@dataclass
class PluginInfo:
    """A loaded plugin: its name, where it comes from, the hooks it implements, what it registered."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    hooks: list[str]
    builtin: bool = False
    calls: dict[str, list[_Call]] = field(default_factory=dict, repr=False)
    registrations: dict[str, list[Registration]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "registers": {kind: [r.name for r in regs] for kind, regs in self.registrations.items() if regs},
        }


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that was left out: ``stage`` is ``import``, ``validate`` or ``register``."""

    name: str
    distribution: str | None
    version: str | None
    stage: str
    error: str

    def as_dict(self) -> dict:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "stage": self.stage, "error": self.error}


def one_line(exc: BaseException) -> str:
    """``"TypeName: message"`` on one line (the type alone when the message is empty)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Pluggy(pluggy.PluginManager):
    """pluggy's manager that also picks up *unmarked* functions named ``sae_audit_*``.

    So a plugin function whose name is misspelt, or that lacks ``@hookimpl``,
    still reaches validation instead of being silently ignored (pytest does
    the same for ``pytest_*``).
    """

    def parse_hookimpl_opts(self, plugin, name):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(PROJECT_NAME + "_"):
            attr = inspect.getattr_static(plugin, name, None)
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if inspect.isfunction(attr) or inspect.ismethod(attr):
                return {}  # type: ignore[return-value]
        return opts


class PluginManager:
    """sae-audit's plugin manager (a pluggy manager with isolation and a record of registrations).

    Args:
        load_entry_points: load plugins from the ``sae_audit`` entry-point group.
        allow: only these plugin names (entry-point or distribution names);
            ``None`` allows every installed plugin. The built-in plugin is
            always loaded.
        strict: a plugin failure raises :class:`PluginError` instead of being
            reported and skipped.

    Raises:
        PluginError: ``strict`` and some plugin failed to load or register.
    """

    def __init__(self, load_entry_points: bool = True, allow: set[str] | None = None, strict: bool = False):
        from sae_audit import __version__

        self.strict = strict
        self.pm = _Pluggy(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self._conflicts: dict[str, str] = {}
        self.register(importlib.import_module(BUILTIN_MODULE), BUILTIN, "sae-audit", __version__, builtin=True)
        if load_entry_points:
            self.load_entry_points(allow)

    @classmethod
    def from_environment(cls, no_plugins: bool = False, environ=None) -> "PluginManager":
        """A manager configured by ``SAE_AUDIT_LOAD_PLUGINS`` and ``SAE_AUDIT_STRICT_PLUGINS``.

        ``no_plugins`` (the CLI's ``--no-plugins``) loads only the built-ins.
        """
        env = os.environ if environ is None else environ
        strict = env.get(ENV_STRICT, "").strip().lower() in ("1", "true", "yes", "on")
        allow = None
        if ENV_ALLOW in env:
            allow = {a.strip() for a in env[ENV_ALLOW].split(",") if a.strip()}
        return cls(load_entry_points=not no_plugins, allow=allow, strict=strict)

    # ------------------------------------------------------------------ loading
    def load_entry_points(self, allow: set[str] | None = None) -> None:
        """Load every plugin of the ``sae_audit`` entry-point group (or those in ``allow``), one at a
        time, in the order of their entry-point names."""
        matched: set[str] = set()
        # sorted by name: the load order (and so the order format readers are tried) is reproducible
        eps = sorted(importlib_metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value))
        for ep in eps:
            if ep.module == BUILTIN_MODULE:
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            if allow is not None:
                hit = {ep.name, dist_name} & allow
                if not hit:
                    continue
                matched |= hit
            if ep.name in self.infos:
                self._fail(ep.name, dist_name, version, "validate",
                           f"the plugin name {ep.name!r} is already taken by {self.who(ep.name)}")
                continue
            try:
                obj = ep.load()
            except BaseException as exc:  # noqa: BLE001 - isolation: SystemExit/KeyboardInterrupt at import too
                self._fail(ep.name, dist_name, version, "import", one_line(exc))
                continue
            self.register(obj, ep.name, dist_name, version)
        for name in sorted((allow or set()) - matched):
            logger.warning("sae-audit: %s names %r, but no installed plugin has that name", ENV_ALLOW, name)

    def register(self, plugin: Any, name: str | None = None, distribution: str | None = None,
                 version: str | None = None, builtin: bool = False) -> str | None:
        """Register a plugin object (a module, class or instance with hook functions).

        Validates it (every ``sae_audit_*`` function must be a known hook with
        known arguments), then calls its register hooks once, recording what
        they pass to ``register(...)``. Returns the plugin name, or ``None``
        when it failed and was left out (recorded in :attr:`failures` and logged).

        Raises:
            PluginError: the plugin failed and the manager is strict.
        """
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self.infos:
            return self._fail(name, distribution, version, "validate",
                              f"the plugin name {name!r} is already taken by {self.who(name)}")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            return self._fail(name, distribution, version, "validate", " ".join(str(exc).split()))
        except ValueError as exc:
            return self._fail(name, distribution, version, "validate", one_line(exc))
        callers = self.pm.get_hookcallers(plugin) or []
        unknown = sorted(hc.name for hc in callers if not hc.has_spec())
        if unknown:
            self.pm.unregister(plugin)
            known = hook_names()
            parts = []
            for u in unknown:
                close = difflib.get_close_matches(u, known, n=1)
                parts.append(f"{u!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            return self._fail(
                name, distribution, version, "validate",
                f"implements {', '.join(parts)}, which {'is' if len(parts) == 1 else 'are'} not a sae-audit "
                "hook; see docs/hooks.md for the hook names",
            )
        module = getattr(plugin, "__name__", None) or f"{type(plugin).__module__}.{type(plugin).__name__}"
        info = PluginInfo(name, distribution, version, module, sorted(hc.name for hc in callers), builtin)
        try:
            info.calls = self._record_register_calls(name)
        except BaseException as exc:  # noqa: BLE001 - isolation; SystemExit from plugin code too
            self.pm.unregister(plugin)
            if builtin:
                raise
            return self._fail(name, distribution, version, "register",
                              str(exc) if isinstance(exc, RegistrationError) else one_line(exc))
        self.infos[name] = info
        self._conflicts.clear()
        return name

    def _record_register_calls(self, plugin: str) -> dict[str, list[_Call]]:
        calls: dict[str, list[_Call]] = {}
        for hook_name in REGISTER_HOOKS.values():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name != plugin:
                    continue
                made = calls.setdefault(hook_name, [])

                def register(*args, **kwargs):
                    made.append(_Call(args, kwargs))

                result = impl.function(register=register) if impl.argnames else impl.function()
                if result is not None:
                    raise RegistrationError(
                        f"{hook_name} returned {type(result).__name__}; register hooks must call "
                        "register(...) for each item and return None"
                    )
        return calls

    def _fail(self, name, distribution, version, stage, error) -> None:
        failure = PluginFailure(name, distribution, version, stage, error)
        self.failures.append(failure)
        where = f" (distribution {distribution} {version or ''})".replace(" )", ")") if distribution else ""
        msg = f"plugin {name!r}{where} failed to {'load' if stage != 'register' else 'register'}: {error}"
        if self.strict:
            raise PluginError(msg)
        logger.warning("sae-audit: warning: %s; continuing without it (%s=1 makes this fatal)", msg, ENV_STRICT)
        return None

    def leave_out(self, plugin: str, stage: str, error: str) -> None:
        """Unregister a loaded plugin and record why (it then takes no part in anything).

        Raises:
            PluginError: the manager is strict.
        """
        info = self.infos.pop(plugin, None)
        if info is None:
            return
        self.pm.unregister(name=plugin)
        self._conflicts.clear()
        self._fail(plugin, info.distribution, info.version, stage, error)

    # ------------------------------------------------------------------ registries
    def registrations(self, kind: str, accept: Callable[..., tuple]) -> list[Registration]:
        """What every plugin registered of ``kind``, each call checked by the domain's ``accept``.

        Args:
            kind: a key of :data:`sae_audit.hookspecs.REGISTER_HOOKS` (``"image_sets"``).
            accept: called with the arguments a plugin passed to ``register(...)``;
                returns ``(name, value, description, keys)`` or raises
                :class:`RegistrationError` (that plugin is then left out, named in
                a warning, and every registry is rebuilt without it) or ``TypeError``
                (wrong arguments; treated the same).

        Returns:
            The registrations in load order (built-in first).

        Raises:
            PluginError: two plugins registered the same name (the message names
                both), or a plugin failed and the manager is strict.
        """
        hook_name = REGISTER_HOOKS[kind]
        while True:
            out: list[Registration] = []
            bad = None
            for info in list(self.infos.values()):
                if kind not in info.registrations:
                    try:
                        info.registrations[kind] = [_make(kind, info.name, accept(*c.args, **c.kwargs))
                                                    for c in info.calls.get(hook_name, [])]
                        _no_duplicates(kind, info.registrations[kind])
                    except (RegistrationError, TypeError) as exc:
                        if info.builtin:
                            raise
                        bad = (info.name, str(exc) if isinstance(exc, RegistrationError) else one_line(exc))
                        break
                out.extend(info.registrations[kind])
            if bad is None:
                break
            self.leave_out(bad[0], "register", bad[1])
        self._check_conflicts(kind, out)
        return out

    def _check_conflicts(self, kind: str, regs: list[Registration]) -> None:
        seen: dict[str, Registration] = {}
        word = kind.rstrip("s").replace("_", " ")
        for r in regs:
            for key in dict.fromkeys((r.name, *r.keys)):
                other = seen.get(key)
                if other is not None and other.plugin != r.plugin:
                    msg = (f"{word} {key!r} is registered twice: by {self.who(other.plugin)} and by "
                           f"{self.who(r.plugin)}; uninstall one, or leave one out with "
                           f"{ENV_ALLOW}=<the plugins to load>")
                    self._conflicts[kind] = msg
                    raise PluginError(msg)
                seen[key] = r
        self._conflicts.pop(kind, None)

    def conflicts(self) -> list[str]:
        """The conflict messages of the registries built so far (empty when there is none)."""
        return list(self._conflicts.values())

    # ------------------------------------------------------------------ calls
    def who(self, plugin: str) -> str:
        """How messages name a plugin: ``plugin 'x', distribution x-dist 1.0`` or ``sae-audit itself (built-in)``."""
        info = self.infos.get(plugin)
        if info is None:
            return f"plugin {plugin!r}"
        if info.builtin:
            return "sae-audit itself (built-in)"
        dist = f", distribution {info.distribution} {info.version or ''}".rstrip() if info.distribution else ""
        return f"plugin {plugin!r}{dist}"

    def guarded(self, plugin: str, what: str, fn: Callable, *args, **kwargs):
        """Call a plugin-provided function ``fn``; its failure becomes a :class:`PluginError` naming the plugin.

        ``what`` says which function it is (``"the image-set factory of 'corrupt'"``).
        A :class:`~sae_audit.errors.SaeAuditError` (a user's mistake the plugin
        reports) passes through unchanged; so does any exception from the
        built-in plugin (a bug in sae-audit). ``SystemExit`` from a plugin is a
        failure like any other.
        """
        try:
            return fn(*args, **kwargs)
        except SaeAuditError:
            raise
        except (Exception, SystemExit) as exc:
            if plugin == BUILTIN:
                raise
            raise PluginError(f"{self.who(plugin)} failed in {what}: {one_line(exc)}") from exc

    def call(self, hook_name: str, **kwargs):
        """Call hook ``hook_name`` through pluggy (wrappers and ``firstresult`` apply).

        Raises:
            PluginError: an implementation raised; the message names the
                plugin and the hook. A :class:`SaeAuditError` from the built-in
                plugin passes through unchanged; so does any exception from the
                built-in plugin (a bug in sae-audit).
        """
        hook = getattr(self.pm.hook, hook_name)
        try:
            return hook(**kwargs)
        except (Exception, SystemExit) as exc:
            culprit = self._culprit(hook, exc)
            if culprit is None or culprit == BUILTIN:
                raise
            if isinstance(exc, SaeAuditError):
                raise PluginError(f"{self.who(culprit)} (hook {hook_name}): {exc}") from exc
            raise PluginError(f"{self.who(culprit)} failed in hook {hook_name}: {one_line(exc)}") from exc

    def call_each(self, hook_name: str, **kwargs) -> Iterator[tuple[str, Any]]:
        """Call each implementation of ``hook_name`` in load order (built-in first); yields
        ``(plugin name, result)``.

        Wrappers are not applied (use :meth:`call` for hooks that have them).

        Raises:
            PluginError: an implementation raised (names the plugin and the hook).
        """
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                continue
            args = {a: kwargs[a] for a in impl.argnames}
            yield impl.plugin_name, self.guarded(impl.plugin_name, f"hook {hook_name}", impl.function, **args)

    def implementers(self, hook_name: str) -> list[str]:
        """The plugins implementing hook ``hook_name`` (wrappers included), in load order."""
        names = [impl.plugin_name for impl in getattr(self.pm.hook, hook_name).get_hookimpls()]
        return [n for n in self.infos if n in names]

    def _culprit(self, hook, exc: BaseException) -> str | None:
        """The plugin whose hook implementation raised ``exc`` (innermost in the traceback)."""
        codes = {}
        for impl in hook.get_hookimpls():
            fn = inspect.unwrap(impl.function)
            code = getattr(getattr(fn, "__func__", fn), "__code__", None)
            if code is not None:
                codes[code] = impl.plugin_name
        found = None
        tb = exc.__traceback__
        while tb is not None:
            found = codes.get(tb.tb_frame.f_code, found)
            tb = tb.tb_next
        return found

    # ------------------------------------------------------------------ describing
    def plugins(self) -> list[PluginInfo]:
        """The loaded plugins, built-in first, then in load order."""
        return list(self.infos.values())

    def provenance(self, only=None) -> list[dict]:
        """Name, distribution and version of every loaded plugin, or of those named in ``only``, in load order
        (for ``results.json``)."""
        return [{"name": p.name, "distribution": p.distribution, "version": p.version} for p in self.infos.values()
                if only is None or p.name in only]

    def describe(self) -> dict:
        """What ``sae-audit plugins --json`` prints (registrations of the registries built so far)."""
        return {
            "plugins": [p.as_dict() for p in self.infos.values()],
            "failed": [f.as_dict() for f in self.failures],
            "conflicts": self.conflicts(),
        }


def _make(kind: str, plugin: str, accepted: tuple) -> Registration:
    name, value, description, keys = accepted
    if not isinstance(name, str) or not name.strip():
        raise RegistrationError(f"{kind.rstrip('s').replace('_', ' ')} name must be a non-empty string, got {name!r}")
    return Registration(kind, name, plugin, value, description, tuple(keys))


def _no_duplicates(kind: str, regs: list[Registration]) -> None:
    seen: set[str] = set()
    for r in regs:
        for key in dict.fromkeys((r.name, *r.keys)):
            if key in seen:
                raise RegistrationError(f"registers {kind.rstrip('s').replace('_', ' ')} {key!r} twice")
            seen.add(key)


# --------------------------------------------------------------------------- the process-wide manager
_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, built from the environment on first use.

    Raises:
        PluginError: ``SAE_AUDIT_STRICT_PLUGINS=1`` and a plugin failed to load.
    """
    global _manager
    if _manager is None:
        _manager = PluginManager.from_environment()
    return _manager


@contextmanager
def use_plugin_manager(manager: PluginManager) -> Iterator[PluginManager]:
    """Make ``manager`` the process-wide manager inside the ``with`` block (restored after)."""
    global _manager
    previous, _manager = _manager, manager
    try:
        yield manager
    finally:
        _manager = previous
