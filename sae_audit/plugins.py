"""The plugin manager: discovery, isolation, registries and calls, on pluggy.

Plugins are modules (or objects) implementing hooks from
:mod:`sae_audit.hookspecs`, listed under the ``sae_audit`` entry-point group
of their distribution::

    [project.entry-points.sae_audit]
    corruptions = "sae_audit_corruptions"

sae-audit's own families, formats, image sets, suites and report sections
come from :mod:`sae_audit.builtin_plugin`, registered through the same hooks
(and listed under the same group in sae-audit's own ``pyproject.toml``).

Loading (:meth:`PluginManager.load_entry_points`) is one plugin at a time: a
plugin that fails to import, implements a hook that does not exist (a
misspelt name), declares arguments a hook does not have, or whose register
hooks raise or pass the wrong types is *reported* (a logged warning naming it
and the error; ``sae-audit plugins`` lists it) and left out, and everything
else goes on. Environment:

- ``SAE_AUDIT_STRICT_PLUGINS=1``: such a failure raises :class:`PluginError`;
- ``SAE_AUDIT_LOAD_PLUGINS=a,b``: load only these plugins (entry-point or
  distribution names); an empty value loads none but the built-ins, as does
  ``sae-audit --no-plugins``.

The process-wide manager is :func:`get_plugin_manager` (built on first use
from the environment); :func:`use_plugin_manager` swaps it for a block of code
(tests, the CLI's ``--no-plugins``). It is the only global state sae-audit keeps.
"""

from __future__ import annotations

import difflib
import importlib.metadata as importlib_metadata
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pluggy

from sae_audit import hookspecs
from sae_audit.errors import SaeAuditError
from sae_audit.hookspecs import PROJECT_NAME, hookimpl

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "PluginError",
    "PluginFailure",
    "PluginInfo",
    "PluginManager",
    "Registration",
    "RenderedSection",
    "ReportSection",
    "get_plugin_manager",
    "hook_names",
    "hookimpl",
    "use_plugin_manager",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sae_audit"
#: Plugin name of sae-audit's own plugin (:mod:`sae_audit.builtin_plugin`).
BUILTIN = "builtin"
BUILTIN_MODULE = "sae_audit.builtin_plugin"
ENV_STRICT = "SAE_AUDIT_STRICT_PLUGINS"
ENV_ALLOW = "SAE_AUDIT_LOAD_PLUGINS"

#: Register hooks, by the kind of thing they register.
REGISTER_HOOKS: dict[str, str] = {
    "model_adapters": "sae_audit_register_model_adapters",
    "sae_formats": "sae_audit_register_sae_formats",
    "image_sets": "sae_audit_register_image_sets",
    "suites": "sae_audit_register_suites",
    "report_sections": "sae_audit_register_report_sections",
    "commands": "sae_audit_register_commands",
}
_KIND_WORD = {
    "model_adapters": "model family",
    "sae_formats": "SAE format",
    "image_sets": "image set",
    "suites": "suite",
    "report_sections": "report section",
    "commands": "command",
}


class PluginError(SaeAuditError):
    """A plugin failed: it could not be loaded, it conflicts with another, or it raised in a hook.

    The message names the plugin (and the hook or the other plugin).
    """


@dataclass(frozen=True)
class ReportSection:
    """What a report-section ``render(results)`` returns.

    Attributes:
        title: the section heading (plain text).
        markdown: the section body in Markdown (no heading).
        html: the section body as an HTML fragment, already escaped,
            self-contained (no script, no external URL).
    """

    title: str
    markdown: str
    html: str


@dataclass(frozen=True)
class RenderedSection:
    """A report section as the renderers receive it: the plugin's, or an error note in its place."""

    name: str
    plugin: str
    title: str
    markdown: str
    html: str
    error: str | None = None


@dataclass(frozen=True)
class Registration:
    """One thing a plugin registered through a ``sae_audit_register_*`` hook.

    ``value`` is what the registry holds: an adapter, a
    :class:`~sae_audit.sae.io.FormatReader`, a factory, a render function or a
    ``(configure, run)`` pair; ``family`` is set for image-set families.
    """

    kind: str
    name: str
    plugin: str
    value: Any
    description: str = ""
    family: bool = False
    keys: tuple[str, ...] = ()


@dataclass
class PluginInfo:
    """A loaded plugin: its name, where it comes from, the hooks it implements."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    hooks: list[str]
    builtin: bool = False
    registrations: list[Registration] = field(default_factory=list)

    def as_dict(self) -> dict:
        regs: dict[str, list[str]] = {}
        for r in self.registrations:
            regs.setdefault(r.kind, []).append(r.name)
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "registers": regs,
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


def hook_names() -> list[str]:
    """The names of every hook specification, in the order of :mod:`sae_audit.hookspecs`."""
    return [name for name, obj in vars(hookspecs).items()
            if name.startswith(PROJECT_NAME + "_") and inspect.isfunction(obj)]


def _one_line(exc: BaseException) -> str:
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


class _BadRegistration(Exception):
    pass


def _check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise _BadRegistration(f"{_KIND_WORD[kind]} name must be a non-empty string, got {name!r}")
    return name


def _check_callable(what: str, value: Any) -> Any:
    if not callable(value):
        raise _BadRegistration(f"{what} must be callable, got {type(value).__name__} {value!r:.60}")
    return value


def _check_text(what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _BadRegistration(f"{what} must be a string, got {type(value).__name__}")
    return value


class PluginManager:
    """sae-audit's plugin manager: a pluggy manager plus the registries the hooks fill.

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
        self.strict = strict
        self.pm = _Pluggy(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        from sae_audit import __version__, builtin_plugin

        self.register(builtin_plugin, BUILTIN, "sae-audit", __version__, builtin=True)
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
                           f"the plugin name {ep.name!r} is already taken by {self._who(ep.name)}")
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - isolation is the point
                self._fail(ep.name, dist_name, version, "import", _one_line(exc))
                continue
            try:
                self.register(obj, ep.name, dist_name, version)
            except PluginError:
                if self.strict:
                    raise
        for name in sorted((allow or set()) - matched):
            logger.warning("sae-audit: %s names %r, but no installed plugin has that name", ENV_ALLOW, name)

    def register(self, plugin: Any, name: str | None = None, distribution: str | None = None,
                 version: str | None = None, builtin: bool = False) -> str | None:
        """Register a plugin object (a module, class or instance with hook functions).

        Validates it (every ``sae_audit_*`` function must be a known hook with
        known arguments), then calls its register hooks. Returns the plugin
        name, or ``None`` when it failed and was left out (the failure is
        recorded in :attr:`failures` and logged).

        Raises:
            PluginError: the plugin failed and the manager is strict.
        """
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self.infos:
            return self._fail(name, distribution, version, "validate",
                              f"the plugin name {name!r} is already taken by {self._who(name)}")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            return self._fail(name, distribution, version, "validate", " ".join(str(exc).split()))
        except ValueError as exc:
            return self._fail(name, distribution, version, "validate", _one_line(exc))
        callers = self.pm.get_hookcallers(plugin) or []
        unknown = sorted(hc.name for hc in callers if not hc.has_spec())
        if unknown:
            self.pm.unregister(plugin)
            known = hook_names()
            parts = []
            for u in unknown:
                close = difflib.get_close_matches(u, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                parts.append(f"{u!r}{hint}")
            return self._fail(
                name, distribution, version, "validate",
                f"implements {', '.join(parts)}, which {'is' if len(parts) == 1 else 'are'} not a sae-audit "
                "hook; see docs/hooks.md for the hook names",
            )
        module = getattr(plugin, "__name__", None) or f"{type(plugin).__module__}.{type(plugin).__name__}"
        info = PluginInfo(name, distribution, version, module, sorted(hc.name for hc in callers), builtin)
        self.infos[name] = info
        try:
            info.registrations = self._collect_registrations(name)
        except Exception as exc:  # noqa: BLE001 - isolation
            self.pm.unregister(plugin)
            del self.infos[name]
            msg = str(exc) if isinstance(exc, _BadRegistration) else _one_line(exc)
            if builtin:
                raise
            return self._fail(name, distribution, version, "register", msg)
        return name

    def _fail(self, name, distribution, version, stage, error) -> None:
        failure = PluginFailure(name, distribution, version, stage, error)
        self.failures.append(failure)
        where = f" (distribution {distribution} {version or ''})".replace(" )", ")") if distribution else ""
        msg = f"plugin {name!r}{where} failed to {'load' if stage != 'register' else 'register'}: {error}"
        if self.strict:
            raise PluginError(msg)
        logger.warning("sae-audit: warning: %s; continuing without it (%s=1 makes this fatal)", msg, ENV_STRICT)
        return None

    def _who(self, plugin: str) -> str:
        info = self.infos.get(plugin)
        if info is None:
            return f"plugin {plugin!r}"
        if info.builtin:
            return "sae-audit itself (built-in)"
        dist = f", distribution {info.distribution} {info.version or ''}".rstrip() if info.distribution else ""
        return f"plugin {plugin!r}{dist}"

    def _collect_registrations(self, plugin: str) -> list[Registration]:
        regs: list[Registration] = []
        for kind, hook_name in REGISTER_HOOKS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name != plugin:
                    continue
                register = self._make_register(kind, plugin, regs)
                result = impl.function(register=register) if impl.argnames else impl.function()
                if result is not None:
                    raise _BadRegistration(
                        f"{hook_name} returned {type(result).__name__}; register hooks must call "
                        "register(...) for each item and return None"
                    )
        return regs

    def _make_register(self, kind: str, plugin: str, out: list[Registration]) -> Callable:
        def add(name, value, description="", family=False, keys=()):
            for r in out:
                if r.kind == kind and (r.name == name or set(keys) & set(r.keys)):
                    raise _BadRegistration(f"registers {_KIND_WORD[kind]} {name!r} twice")
            out.append(Registration(kind, name, plugin, value, description, family, tuple(keys)))

        if kind == "model_adapters":
            def register(adapter):
                from sae_audit.models.adapters import FamilyAdapter

                if not isinstance(adapter, FamilyAdapter):
                    raise _BadRegistration(
                        f"register() takes a sae_audit.models.adapters.FamilyAdapter instance, got "
                        f"{type(adapter).__name__}"
                    )
                family = _check_name(kind, adapter.family)
                add(family, adapter, type(adapter).__doc__ or "", keys=tuple(adapter.model_types))
        elif kind == "sae_formats":
            def register(name, detect, read):
                from sae_audit.sae.io import FormatReader

                add(_check_name(kind, name), FormatReader(name, _check_callable("detect", detect),
                                                          _check_callable("read", read)))
        elif kind == "image_sets":
            def register(name, factory, description, family=False):
                _check_name(kind, name)
                if family and ":" in name:
                    raise _BadRegistration(f"image-set family prefix {name!r} must not contain ':'")
                add(name, _check_callable("factory", factory), _check_text("description", description),
                    family=bool(family))
        elif kind == "suites":
            def register(name, factory, description, compare=None, needs_labels=False, needs_embeddings=False):
                from sae_audit.suites import SuiteInfo

                _check_name(kind, name)
                _check_callable("factory", factory)
                if compare is not None:
                    _check_callable("compare", compare)
                add(name, SuiteInfo(name, _check_text("description", description), factory, compare,
                                    bool(needs_labels), bool(needs_embeddings)), description)
        elif kind == "report_sections":
            def register(name, render):
                add(_check_name(kind, name), _check_callable("render", render))
        else:  # commands
            def register(name, configure, run, help):  # noqa: A002 - argparse's word
                if not isinstance(name, str) or not name or name.startswith("-") or " " in name:
                    raise _BadRegistration(f"command name must be one word, got {name!r}")
                add(name, (_check_callable("configure", configure), _check_callable("run", run)),
                    _check_text("help", help))
        return register

    # ------------------------------------------------------------------ registries
    def registrations(self, kind: str) -> list[Registration]:
        """Everything registered of ``kind`` (a key of :data:`REGISTER_HOOKS`), in load order.

        Raises:
            PluginError: two plugins registered the same name (the message names both).
        """
        seen: dict[str, Registration] = {}
        out = []
        for info in self.infos.values():
            for r in info.registrations:
                if r.kind != kind:
                    continue
                for key in (r.name, *r.keys):
                    other = seen.get(key)
                    if other is not None and other.plugin != r.plugin:
                        raise PluginError(
                            f"{_KIND_WORD[kind]} {key!r} is registered twice: by {self._who(other.plugin)} "
                            f"and by {self._who(r.plugin)}; uninstall one, or leave one out with "
                            f"{ENV_ALLOW}=<the plugins to load>"
                        )
                    seen[key] = r
                out.append(r)
        return out

    def conflicts(self) -> list[str]:
        """The conflict messages of every registry (empty when there is none)."""
        msgs = []
        for kind in REGISTER_HOOKS:
            try:
                self.registrations(kind)
            except PluginError as exc:
                msgs.append(str(exc))
        return msgs

    def image_sets(self) -> dict[str, Registration]:
        """Named image sets and families by name (families have ``family=True``)."""
        return {r.name: r for r in self.registrations("image_sets")}

    def open_image_set(self, spec: str):
        """The image set a registered name or family builds for ``spec``, or ``None`` if none matches.

        Raises:
            PluginError: the factory raised something other than
                :class:`SaeAuditError` or returned something that is not an
                :class:`~sae_audit.data.ImageSet` (the message names the plugin).
            SaeAuditError: the factory's own error (bad spec, missing package).
        """
        from sae_audit.data.base import ImageSet

        sets = self.image_sets()
        r = sets.get(spec)
        if r is not None and not r.family:
            args: tuple = ()
        else:
            prefix, sep, rest = spec.partition(":")
            r = sets.get(prefix) if sep else None
            if r is None or not r.family:
                return None
            args = (rest,)
        result = self._guarded(r, "image-set factory", r.value, *args)
        if not isinstance(result, ImageSet):
            raise PluginError(
                f"{self._who(r.plugin)}: the factory of image set {r.name!r} returned "
                f"{type(result).__name__}, expected a sae_audit.data.ImageSet"
            )
        return result

    def sae_formats(self) -> list:
        """The :class:`~sae_audit.sae.io.FormatReader` of every registered format, built-in first."""
        return [r.value for r in self.registrations("sae_formats")]

    def model_adapters(self) -> dict[str, Any]:
        """Family adapters by family name (built-in first)."""
        return {r.name: r.value for r in self.registrations("model_adapters")}

    def model_adapter(self, key: str):
        """The adapter for a family name or a ``config.model_type``, or ``None``."""
        for r in self.registrations("model_adapters"):
            if key == r.name or key in r.keys:
                return r.value
        return None

    def suites(self) -> dict[str, Registration]:
        """Audit suites by name (``value`` is a :class:`sae_audit.suites.SuiteInfo`)."""
        return {r.name: r for r in self.registrations("suites")}

    def commands(self) -> dict[str, Registration]:
        """Plugin CLI commands by name (``value`` is ``(configure, run)``)."""
        return {r.name: r for r in self.registrations("commands")}

    def _guarded(self, reg: Registration, what: str, fn: Callable, *args, **kwargs):
        """Call a plugin-provided function; a non-user error becomes a :class:`PluginError` naming the plugin."""
        try:
            return fn(*args, **kwargs)
        except SaeAuditError:
            raise
        except Exception as exc:
            if reg.plugin == BUILTIN:
                raise
            raise PluginError(
                f"{self._who(reg.plugin)} failed in the {what} of {reg.name!r} "
                f"({REGISTER_HOOKS[reg.kind]}): {_one_line(exc)}"
            ) from exc

    def run_command(self, name: str, args) -> int:
        """Run the plugin command ``name`` with parsed ``args``; its exit status.

        Raises:
            PluginError: the command raised something other than :class:`SaeAuditError`
                or returned something other than an int or ``None``.
        """
        reg = self.commands()[name]
        code = self._guarded(reg, "command", reg.value[1], args)
        if code is None:
            return 0
        if not isinstance(code, int) or isinstance(code, bool):
            raise PluginError(f"{self._who(reg.plugin)}: command {name!r} returned {type(code).__name__}, "
                              "expected an exit status (int) or None")
        return code

    def render_report_sections(self, results: dict) -> list[RenderedSection]:
        """Render every registered report section from ``results``.

        A section whose ``render`` raises or returns something other than
        ``None`` or a :class:`ReportSection` becomes an error note naming the
        plugin (logged too); the other sections are unaffected. Never raises
        for a plugin's failure (only for registry conflicts: :class:`PluginError`).
        """
        out = []
        for r in self.registrations("report_sections"):
            try:
                section = r.value(results)
                if section is None:
                    continue
                if not isinstance(section, ReportSection) or not all(
                    isinstance(getattr(section, a), str) for a in ("title", "markdown", "html")
                ):
                    raise TypeError(f"render returned {type(section).__name__}, expected a "
                                    "sae_audit.plugins.ReportSection of three strings or None")
            except Exception as exc:  # noqa: BLE001 - one section must not sink the report
                if r.plugin == BUILTIN and not isinstance(exc, (TypeError, SaeAuditError)):
                    raise
                note = f"{self._who(r.plugin)} failed to render report section {r.name!r}: {_one_line(exc)}"
                logger.warning("sae-audit: warning: %s", note)
                out.append(RenderedSection(r.name, r.plugin, f"{r.name} (error)", "", "", error=note))
                continue
            out.append(RenderedSection(r.name, r.plugin, section.title, section.markdown, section.html))
        return out

    # ------------------------------------------------------------------ calls
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
        except Exception as exc:
            culprit = self._culprit(hook, exc)
            if culprit is None or culprit == BUILTIN:
                raise
            if isinstance(exc, SaeAuditError):
                raise PluginError(f"{self._who(culprit)} (hook {hook_name}): {exc}") from exc
            raise PluginError(f"{self._who(culprit)} failed in hook {hook_name}: {_one_line(exc)}") from exc

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
            try:
                result = impl.function(**{a: kwargs[a] for a in impl.argnames})
            except Exception as exc:
                if impl.plugin_name == BUILTIN:
                    raise
                if isinstance(exc, SaeAuditError):
                    raise PluginError(f"{self._who(impl.plugin_name)} (hook {hook_name}): {exc}") from exc
                raise PluginError(
                    f"{self._who(impl.plugin_name)} failed in hook {hook_name}: {_one_line(exc)}"
                ) from exc
            yield impl.plugin_name, result

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

    def card_metadata(self, config, dataset: dict) -> dict:
        """Merged model-card metadata from every ``sae_audit_card_metadata`` implementation.

        Raises:
            PluginError: an implementation raised, returned something other than a
                dict or ``None``, or set a key another plugin set (names both).
        """
        meta: dict = {}
        owner: dict[str, str] = {}
        for plugin, result in self.call_each("sae_audit_card_metadata", config=config, dataset=dataset):
            if result is None:
                continue
            if not isinstance(result, dict):
                raise PluginError(f"{self._who(plugin)}: sae_audit_card_metadata returned "
                                  f"{type(result).__name__}, expected a dict or None")
            for key, value in result.items():
                if key == "tags":
                    if not isinstance(value, list):
                        raise PluginError(f"{self._who(plugin)}: card metadata 'tags' must be a list")
                    meta.setdefault("tags", []).extend(t for t in value if t not in meta.get("tags", []))
                    continue
                if key in meta:
                    raise PluginError(f"model-card metadata key {key!r} is set by both {self._who(owner[key])} "
                                      f"and {self._who(plugin)}")
                meta[key], owner[key] = value, plugin
        return meta

    def run_finished(self, results: dict) -> dict:
        """Call ``sae_audit_run_finished``; returns ``{plugin name: dict}`` of what implementations returned.

        Raises:
            PluginError: an implementation raised or returned something other than a dict or ``None``.
        """
        import json

        extensions = {}
        for plugin, result in self.call_each("sae_audit_run_finished", results=results):
            if result is None:
                continue
            if not isinstance(result, dict):
                raise PluginError(f"{self._who(plugin)}: sae_audit_run_finished returned "
                                  f"{type(result).__name__}, expected a dict or None")
            try:
                json.dumps(result, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise PluginError(f"{self._who(plugin)}: sae_audit_run_finished returned a dict that is not "
                                  f"JSON-serialisable ({exc})") from None
            extensions[plugin] = result
        return extensions

    # ------------------------------------------------------------------ describing
    def plugins(self) -> list[PluginInfo]:
        """The loaded plugins, built-in first, then in load order."""
        return list(self.infos.values())

    def provenance(self) -> list[dict]:
        """Name, distribution and version of every loaded plugin (for ``results.json``)."""
        return [{"name": p.name, "distribution": p.distribution, "version": p.version} for p in self.infos.values()]

    def describe(self) -> dict:
        """What ``sae-audit plugins --json`` prints."""
        return {
            "plugins": [p.as_dict() for p in self.infos.values()],
            "failed": [f.as_dict() for f in self.failures],
            "conflicts": self.conflicts(),
        }


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


# --------------------------------------------------------------------------- hook reference
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


def hook_reference() -> str:
    """``docs/hooks.md``: the hook reference, generated from the hookspec docstrings."""
    lines = [
        "# Hook reference",
        "",
        "<!-- Generated from sae_audit/hookspecs.py by `python -m sae_audit.plugins --hook-reference > docs/hooks.md`;",
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
        lines += [f"## `{name}{inspect.signature(fn)}`{flags}", "", docstring_markdown(fn.__doc__ or ""), ""]
    return "\n".join(lines).rstrip() + "\n"


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--hook-reference"]:
        sys.stdout.write(hook_reference())
        return 0
    print("usage: python -m sae_audit.plugins --hook-reference", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())

