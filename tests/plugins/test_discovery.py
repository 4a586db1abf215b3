"""Entry-point discovery, isolation of broken plugins, the allow-list, strict mode,
conflicts and wrong types, through the real CLI and throw-away installed distributions."""

from __future__ import annotations

import json
import logging

import pytest

from sae_audit.cli import main
from sae_audit.data import open_image_set
from sae_audit.errors import SaeAuditError
from sae_audit.hookspecs import hookimpl
from sae_audit.plugin_manager import ENV_ALLOW, ENV_STRICT, PluginError, PluginManager

GOOD = '''
from PIL import Image
from sae_audit.data import ImageSet
from sae_audit.hookspecs import hookimpl


class Greys(ImageSet):
    name, source = "greys", "generated"

    def __len__(self):
        return 6

    def _open(self, i):
        return Image.new("RGB", (32, 32), (40 * i,) * 3)


@hookimpl
def sae_audit_register_image_sets(register):
    register("greys", Greys, "six grey squares")
'''

BROKEN_IMPORT = '''
import a_module_that_does_not_exist  # noqa: F401
'''

MISSPELT = '''
def sae_audit_register_image_set(register):   # the "s" is missing, and no @hookimpl
    register("never", None, "")
'''

BAD_ARGS = '''
from sae_audit.hookspecs import hookimpl

@hookimpl
def sae_audit_register_image_sets(registr):
    pass
'''

NOT_CALLABLE = '''
from sae_audit.hookspecs import hookimpl

@hookimpl
def sae_audit_register_image_sets(register):
    register("oops", "not a factory", "a string where the factory goes")
'''

RETURNS_LIST = '''
from sae_audit.hookspecs import hookimpl

@hookimpl
def sae_audit_register_suites(register):
    return [("my-suite", object, "returned instead of registered")]
'''

RAISES_IN_REGISTER = '''
from sae_audit.hookspecs import hookimpl

@hookimpl
def sae_audit_register_image_sets(register):
    raise RuntimeError("config file missing")
'''


def _install_zoo(plugin_site):
    plugin_site("good-plugin", "1.2.3", {"good_plugin": GOOD}, {"good": "good_plugin"})
    plugin_site("broken-plugin", "0.1", {"broken_plugin": BROKEN_IMPORT}, {"broken": "broken_plugin"})
    plugin_site("misspelt-plugin", "0.2", {"misspelt_plugin": MISSPELT}, {"misspelt": "misspelt_plugin"})
    plugin_site("badargs-plugin", "0.3", {"badargs_plugin": BAD_ARGS}, {"badargs": "badargs_plugin"})
    plugin_site("notcallable-plugin", "0.4", {"notcallable_plugin": NOT_CALLABLE}, {"notcallable": "notcallable_plugin"})
    plugin_site("returns-plugin", "0.5", {"returns_plugin": RETURNS_LIST}, {"returns": "returns_plugin"})
    plugin_site("raises-plugin", "0.6", {"raises_plugin": RAISES_IN_REGISTER}, {"raises": "raises_plugin"})


ZOO = "good,broken,misspelt,badargs,notcallable,returns,raises"


def plugins_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main([*args, "plugins", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_broken_plugins_are_reported_and_the_cli_goes_on(plugin_site, monkeypatch, capsys, caplog):
    _install_zoo(plugin_site)
    monkeypatch.setenv(ENV_ALLOW, ZOO)
    caplog.set_level(logging.WARNING, logger="sae_audit.plugin_manager")
    assert main(["sets"]) == 0
    out = capsys.readouterr().out
    assert "greys" in out and "six grey squares" in out and "fashion-mnist:test" in out
    warned = caplog.text
    for name in ("broken", "misspelt", "badargs", "notcallable", "returns", "raises"):
        assert f"plugin '{name}'" in warned
    assert "SAE_AUDIT_STRICT_PLUGINS=1 makes this fatal" in warned

    info = plugins_json(capsys)
    loaded = {p["name"]: p for p in info["plugins"]}
    assert list(loaded) == ["builtin", "good"]
    assert loaded["good"]["distribution"] == "good-plugin" and loaded["good"]["version"] == "1.2.3"
    assert loaded["good"]["hooks"] == ["sae_audit_register_image_sets"]
    assert loaded["good"]["registers"] == {"image_sets": ["greys"]}
    failed = {f["name"]: f for f in info["failed"]}
    assert failed["broken"]["stage"] == "import" and failed["broken"]["distribution"] == "broken-plugin"
    assert "No module named 'a_module_that_does_not_exist'" in failed["broken"]["error"]
    assert failed["misspelt"]["stage"] == "validate"
    assert ("'sae_audit_register_image_set' (did you mean 'sae_audit_register_image_sets'?)"
            in failed["misspelt"]["error"])
    assert "registr" in failed["badargs"]["error"] and failed["badargs"]["stage"] == "validate"
    assert failed["notcallable"]["stage"] == "register"
    assert "factory must be callable, got str" in failed["notcallable"]["error"]
    assert "sae_audit_register_suites returned list" in failed["returns"]["error"]
    assert failed["raises"]["error"] == "RuntimeError: config file missing"

    capsys.readouterr()
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    assert "good (good-plugin 1.2.3; good_plugin)" in text and "failed to load (left out):" in text
    assert "broken (broken-plugin 0.1): import: ModuleNotFoundError" in text


def test_strict_mode_makes_a_failure_fatal(plugin_site, monkeypatch, capsys):
    _install_zoo(plugin_site)
    monkeypatch.setenv(ENV_ALLOW, "good,broken")
    monkeypatch.setenv(ENV_STRICT, "1")
    assert main(["sets"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sae-audit: error: plugin 'broken' (distribution broken-plugin 0.1) failed to load: "
                          "ModuleNotFoundError")
    assert "Traceback" not in err
    monkeypatch.setenv(ENV_ALLOW, "good")
    assert main(["sets"]) == 0


def test_allow_list_and_no_plugins(plugin_site, monkeypatch, capsys, caplog):
    _install_zoo(plugin_site)
    monkeypatch.setenv(ENV_ALLOW, "good-plugin")  # a distribution name works too
    assert [p["name"] for p in plugins_json(capsys)["plugins"]] == ["builtin", "good"]
    assert plugins_json(capsys)["failed"] == []
    monkeypatch.setenv(ENV_ALLOW, "")
    assert [p["name"] for p in plugins_json(capsys)["plugins"]] == ["builtin"]
    monkeypatch.setenv(ENV_ALLOW, ZOO)
    info = plugins_json(capsys, "--no-plugins")
    assert [p["name"] for p in info["plugins"]] == ["builtin"] and info["failed"] == []
    assert main(["--no-plugins", "sets"]) == 0 and "greys" not in capsys.readouterr().out
    caplog.set_level(logging.WARNING, logger="sae_audit.plugin_manager")
    monkeypatch.setenv(ENV_ALLOW, "good,gone")
    plugins_json(capsys)
    assert "SAE_AUDIT_LOAD_PLUGINS names 'gone', but no installed plugin has that name" in caplog.text


TWIN = '''
from sae_audit.hookspecs import hookimpl
from good_plugin import Greys

@hookimpl
def sae_audit_register_image_sets(register):
    register("{name}", Greys, "the same name again")
'''


def test_conflicting_names_are_an_error_naming_both(plugin_site, monkeypatch, capsys):
    _install_zoo(plugin_site)
    plugin_site("twin-plugin", "2.0", {"twin_plugin": TWIN.format(name="greys")}, {"twin": "twin_plugin"})
    plugin_site("shadow-plugin", "3.0", {"shadow_plugin": TWIN.format(name="digits")}, {"shadow": "shadow_plugin"})
    monkeypatch.setenv(ENV_ALLOW, "good,twin")
    assert main(["sets"]) == 2
    err = capsys.readouterr().err
    assert ("image set 'greys' is registered twice: by plugin 'good', distribution good-plugin 1.2.3 and by "
            "plugin 'twin', distribution twin-plugin 2.0") in err
    info = plugins_json(capsys)  # the listing still works, and shows the conflict
    assert len(info["conflicts"]) == 1 and "'greys' is registered twice" in info["conflicts"][0]

    monkeypatch.setenv(ENV_ALLOW, "shadow")
    assert main(["sets"]) == 2
    assert "by sae-audit itself (built-in) and by plugin 'shadow'" in capsys.readouterr().err


def test_two_distributions_with_one_plugin_name(plugin_site, monkeypatch, capsys):
    _install_zoo(plugin_site)
    plugin_site("impostor-plugin", "9.9", {"impostor_plugin": GOOD.replace('"greys"', '"greys2"')},
                {"good": "impostor_plugin"})
    monkeypatch.setenv(ENV_ALLOW, "good")
    info = plugins_json(capsys)
    assert [p["name"] for p in info["plugins"]] == ["builtin", "good"]
    assert len(info["failed"]) == 1 and "the plugin name 'good' is already taken by plugin 'good'" in info["failed"][0]["error"]


COMMAND_RUN = '''
from sae_audit.hookspecs import hookimpl

@hookimpl
def sae_audit_register_commands(register):
    register("run", lambda parser: None, lambda args: 0, "takes over run")
'''


def test_plugin_command_shadowing_a_builtin_one(plugin_site, monkeypatch, capsys):
    plugin_site("hijack-plugin", "1.0", {"hijack_plugin": COMMAND_RUN}, {"hijack": "hijack_plugin"})
    monkeypatch.setenv(ENV_ALLOW, "hijack")
    assert main(["sets"]) == 2
    err = capsys.readouterr().err
    assert "command 'run' is registered twice: by sae-audit itself (built-in) and by plugin 'hijack'" in err
    assert main(["--no-plugins", "sets"]) == 0


FAILS_IN_RUN = '''
from sae_audit.hookspecs import hookimpl

@hookimpl
def sae_audit_run_configured(saes):
    raise ValueError(f"refusing {len(saes)} SAE(s)")
'''

SECTION_FAILS = '''
from sae_audit.hookspecs import hookimpl

def render(results):
    return 1 / 0

@hookimpl
def sae_audit_register_report_sections(register):
    register("division", render)
'''


def test_cli_run_records_plugins_and_survives_a_broken_one(plugin_site, monkeypatch, capsys, tiny_model_dir,
                                                          tiny_sae_dir, tiny_image_folder, tmp_path):
    _install_zoo(plugin_site)
    plugin_site("section-plugin", "0.7", {"section_plugin": SECTION_FAILS}, {"section": "section_plugin"})
    plugin_site("veto-plugin", "0.8", {"veto_plugin": FAILS_IN_RUN}, {"veto": "veto_plugin"})
    monkeypatch.setenv(ENV_ALLOW, "good,broken,section")
    out = tmp_path / "audit"
    args = ["run", str(tiny_model_dir), "--sae", str(tiny_sae_dir), "--id", str(tiny_image_folder),
            "--ood", "greys", "--out", str(out), "--device", "cpu", "-q"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["plugins"] == [  # the plugins that took part: "section" only adds (a failing) report section
        {"name": "builtin", "distribution": "sae-audit", "version": results["tool"]["version"]},
        {"name": "good", "distribution": "good-plugin", "version": "1.2.3"},
    ]
    assert {"good", "section"} <= set(results["provenance"]["plugins"])  # installed and loaded, all of them
    assert results["datasets"][1]["name"] == "greys" and results["datasets"][1]["n_images"] == 6
    md = (out / "report.md").read_text()
    assert "| good | good-plugin | 1.2.3 |" in md  # the built-in "Plugins" section
    assert ("Section not rendered:** plugin 'section', distribution section-plugin 0.7 failed to render "
            "report section 'division': ZeroDivisionError: division by zero") in md
    assert "Section not rendered" in (out / "report.html").read_text()

    monkeypatch.setenv(ENV_ALLOW, "good,veto")
    capsys.readouterr()
    assert main(args + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("sae-audit: error: plugin 'veto', distribution veto-plugin 0.8 failed in hook "
                           "sae_audit_run_configured: ValueError: refusing 1 SAE(s)")


class WrongSet:
    @hookimpl
    def sae_audit_register_image_sets(self, register):
        register("listy", lambda: [1, 2, 3], "returns a list")
        register("crashy", lambda: {}["missing"], "raises KeyError")
        register("user-error", self.user_error, "raises a SaeAuditError")

    @staticmethod
    def user_error():
        raise SaeAuditError("install the frobnicator package")


def test_image_set_factories_that_misbehave(sae_audit_plugins):
    sae_audit_plugins.register(WrongSet(), "wrongset")
    with pytest.raises(PluginError, match=r"plugin 'wrongset': the factory of image set 'listy' returned list"):
        open_image_set("listy")
    with pytest.raises(PluginError, match=r"plugin 'wrongset' failed in the image-set factory of 'crashy' "
                                          r"\(sae_audit_register_image_sets\): KeyError: 'missing'"):
        open_image_set("crashy")
    with pytest.raises(SaeAuditError, match="^install the frobnicator package$"):
        open_image_set("user-error")


def test_registering_an_object_twice_or_a_misspelt_marked_hook(sae_audit_plugins):
    class Marked:
        @hookimpl
        def sae_audit_run_finishd(self, results):
            pass

    assert sae_audit_plugins.register(Marked(), "marked", strict=False) is None
    failure = sae_audit_plugins.manager.failures[-1]
    assert failure.stage == "validate" and "did you mean 'sae_audit_run_finished'" in failure.error
    with pytest.raises(PluginError, match="plugin 'marked' failed to load: implements 'sae_audit_run_finishd'"):
        sae_audit_plugins.register(Marked(), "marked")
    # a failed plugin leaves no trace in the hooks
    assert [p.name for p in sae_audit_plugins.manager.plugins()] == ["builtin"]


def test_manager_from_environment_parses_switches():
    m = PluginManager.from_environment(environ={ENV_ALLOW: "", ENV_STRICT: "yes"})
    assert m.strict and [p.name for p in m.plugins()] == ["builtin"]
    m = PluginManager.from_environment(environ={ENV_STRICT: "0", ENV_ALLOW: " , "})
    assert not m.strict and [p.name for p in m.plugins()] == ["builtin"]
