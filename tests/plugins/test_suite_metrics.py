"""A plugin suite and its declared metric, end to end through the real command line run in process
against a sandboxed plugin manager (``sae_audit_plugins.run``): the sandbox-only plugin is seen by the
CLI, its metric joins the results' metrics table, ``--fail-on``, ``report diff``, the model card and the
verdict, and bad declarations are refused naming the plugin."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from sae_audit.hookspecs import hookimpl
from sae_audit.plugin_manager import PluginError
from sae_audit.results import MetricInfo
from sae_audit.testing import make_image_folder, run_cli


class FiringCount:
    """Counts firings (values > 0) and tokens: mean L0, computed apart from the coverage suite."""

    def __init__(self):
        self.fired, self.tokens = 0, 0

    def accumulate(self, batch):
        self.fired += int((batch.codes.values > 0).sum())
        self.tokens += int(batch.x.shape[0])

    def merge(self, other):
        self.fired += other.fired
        self.tokens += other.tokens

    def finish(self):
        return {"counts": {"fired": self.fired, "tokens": self.tokens},
                "l0": {"mean": self.fired / self.tokens if self.tokens else None}}


def compare(id_acc, ood_acc, ctx):
    a, b = id_acc.finish()["l0"]["mean"], ood_acc.finish()["l0"]["mean"]
    return {"l0_gap": None if a is None or b is None else b - a}


class FiringPlugin:
    @hookimpl
    def sae_audit_register_suites(self, register):
        register("firing", lambda context: FiringCount(), "firings per token, counted by a plugin",
                 compare=compare,
                 metrics=[MetricInfo("plugin_l0", "L0 counted by the plugin", None, "dataset", path=("l0", "mean")),
                          MetricInfo("plugin_l0_gap", "L0 gap (OOD - ID), by the plugin", False, "pair",
                                     path="l0_gap")])


@pytest.fixture()
def ood_folder(tmp_path):
    return make_image_folder(tmp_path / "ood", n_per_class=3, classes=("a", "b"), seed=5)


def run_args(model, sae, ids, ood, out, *extra):
    return ("run", model, "--sae", sae, "--id", ids, "--ood", ood, "--out", out, "--device", "cpu", "-q", *extra)


def test_a_sandbox_only_plugin_is_seen_by_the_in_process_cli(sae_audit_plugins, tiny_model_dir, tiny_sae_dir,
                                                             tiny_image_folder, ood_folder, tmp_path):
    sae_audit_plugins.register(FiringPlugin(), "firing-plugin")
    listed = sae_audit_plugins.run("suites")
    assert listed.exit_code == 0
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("firing "))
    assert "[metrics: plugin_l0, plugin_l0_gap]" in line and line.endswith("[plugin firing-plugin]")
    assert "firing-plugin" not in run_cli("suites").stdout  # the installed plugins alone: not there
    assert run_cli(*run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, tmp_path / "x",
                             "--suite", "firing")).exit_code == 2  # "unknown suite" outside the sandbox

    out = tmp_path / "audit"
    result = sae_audit_plugins.run(*run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out,
                                             "--suite", "firing", "--fail-on", "plugin_l0_gap>-100",
                                             "--fail-on", "plugin_l0[ood]>1000"))
    assert result.exit_code == 1, result.stderr  # the first condition holds
    assert result.stderr.splitlines() == [
        f"sae-audit: --fail-on plugin_l0_gap>-100 holds (sae (fixed-k, k=4) on images vs ood: "
        f"{json.loads((out / 'results.json').read_text())['saes'][0]['suites']['firing']['pairs'][0]['l0_gap']:.4g})"]
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["plugin_l0_gap"] == {
        "label": "L0 gap (OOD - ID), by the plugin", "higher_is_better": False, "scope": "pair", "description": "",
        "suite": "firing", "path": ["l0_gap"], "plugin": "firing-plugin", "pct": False, "digits": 3}
    assert [p["name"] for p in results["plugins"]] == ["builtin", "firing-plugin"]
    sae = results["saes"][0]
    for name in ("images", "ood"):  # independent reference: the coverage suite's own L0
        assert sae["suites"]["firing"]["datasets"][name]["l0"]["mean"] == pytest.approx(
            sae["datasets"][name]["l0_mean"], rel=1e-12)
    gap = sae["suites"]["firing"]["pairs"][0]["l0_gap"]
    assert gap == pytest.approx(sae["datasets"]["ood"]["l0_mean"] - sae["datasets"]["images"]["l0_mean"])
    md = (out / "report.md").read_text()
    assert "- L0 gap (OOD - ID), by the plugin (lower is better; suite firing of plugin firing-plugin): " \
           "images (ID) → ood (OOD): sae (fixed-k, k=4) " in md  # the verdict


def test_a_plugin_metric_in_report_diff_and_the_card(sae_audit_plugins, tiny_model_dir, tiny_sae_dir,
                                                     tiny_image_folder, ood_folder, tmp_path):
    sae_audit_plugins.register(FiringPlugin(), "firing-plugin")
    out = tmp_path / "a"
    assert sae_audit_plugins.run(*run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out,
                                           "--suite", "firing")).exit_code == 0
    a = json.loads((out / "results.json").read_text())
    b = copy.deepcopy(a)
    b["saes"][0]["suites"]["firing"]["pairs"][0]["l0_gap"] += 0.5  # worse: lower is better
    b["saes"][0]["suites"]["firing"]["datasets"]["ood"]["l0"]["mean"] += 1.0  # no direction
    (tmp_path / "b.json").write_text(json.dumps(b))
    # The documents carry the metric's table: the diff needs no plugin (run outside the sandbox).
    diff = run_cli("report", "diff", out / "results.json", tmp_path / "b.json")
    assert diff.exit_code == 0, diff.stderr
    rows = {ln for ln in diff.stdout.splitlines() if "by the plugin" in ln}
    old_gap = a["saes"][0]["suites"]["firing"]["pairs"][0]["l0_gap"]
    assert (f"| images vs ood | L0 gap (OOD - ID), by the plugin (suite firing) | {old_gap:.3f} | "
            f"{old_gap + 0.5:.3f} | +0.500 | worse |") in rows
    assert any(r.startswith("| ood | L0 counted by the plugin") and r.endswith("| +1.000 |  |") for r in rows)

    card = tmp_path / "README.md"
    assert run_cli("card", "--results", out / "results.json", "--card", card, "-q").exit_code == 0
    text = card.read_text()
    assert "sae-audit/plugin_l0_gap" in text  # has a direction: in model-index
    assert "sae-audit/plugin_l0\n" not in text and "type: sae-audit/plugin_l0\n" not in text  # descriptive: not


def test_a_suite_metric_whose_suite_does_not_run_is_refused_first(sae_audit_plugins, tiny_model_dir, tiny_sae_dir,
                                                                  tiny_image_folder, ood_folder, tmp_path):
    sae_audit_plugins.register(FiringPlugin(), "firing-plugin")
    out = tmp_path / "a"
    result = sae_audit_plugins.run(*run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out,
                                             "--fail-on", "plugin_l0>0"))
    assert result.exit_code == 2 and not out.exists()
    assert result.errors == ["sae-audit: error: --fail-on 'plugin_l0>0': plugin_l0 is a metric of suite 'firing', "
                             "which this audit does not run; add firing to --suite"]
    unknown = sae_audit_plugins.run(*run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, out,
                                              "--fail-on", "plugin_l1>0"))
    assert unknown.exit_code == 2 and "unknown metric 'plugin_l1'; known:" in unknown.errors[0]
    assert "plugin_l0_gap" in unknown.errors[0] and "ms_mean" in unknown.errors[0]


def declaring(*metrics, compare_fn=compare):
    class Plugin:
        @hookimpl
        def sae_audit_register_suites(self, register):
            register("declares", lambda c: FiringCount(), "declares metrics", compare=compare_fn,
                     metrics=list(metrics))

    return Plugin()


@pytest.mark.parametrize("metrics, compare_fn, why", [
    ([MetricInfo("fvu", "FVU again", False, "dataset")], compare, "'fvu' is a coverage metric of sae-audit"),
    ([MetricInfo("gap.low", "dotted", False, "pair")], compare, "must be letters, digits and '_'"),
    ([MetricInfo("x", "x", False, "per set")], compare, "scope must be 'dataset' or 'pair'"),
    ([MetricInfo("x", "x", "yes", "dataset")], compare, "higher_is_better must be True, False or None"),
    ([MetricInfo("x", "x", True, "pair")], None, "is per pair, but the suite has no compare"),
    ([MetricInfo("x", "x", True, "dataset"), MetricInfo("x", "y", True, "dataset")], compare, "declares metric 'x' twice"),
    (["x"], compare, "a metric must be a sae_audit.results.MetricInfo, got str"),
])
def test_bad_metric_declarations_leave_the_plugin_out_by_name(sae_audit_plugins, metrics, compare_fn, why):
    sae_audit_plugins.register(declaring(*metrics, compare_fn=compare_fn), "declarer", strict=False)
    from sae_audit.suites import available_suites

    assert "declares" not in available_suites()
    failure = sae_audit_plugins.failures[-1]
    assert failure.name == "declarer" and failure.stage == "register" and why in failure.error


def test_two_plugins_declaring_one_metric_is_a_conflict_naming_both(sae_audit_plugins, tiny_model_dir):
    class Other:
        @hookimpl
        def sae_audit_register_suites(self, register):
            register("other", lambda c: FiringCount(), "another", metrics=[MetricInfo("plugin_l0", "L0", None,
                                                                                       "dataset")])

    sae_audit_plugins.register(FiringPlugin(), "firing-plugin")
    sae_audit_plugins.register(Other(), "other-plugin")
    from sae_audit.suites import available_suites

    with pytest.raises(PluginError, match="metric 'plugin_l0' is declared twice: by suite 'firing' of plugin "
                                          "'firing-plugin' and by suite 'other' of plugin 'other-plugin'"):
        available_suites()
    result = sae_audit_plugins.run("suites")
    assert result.exit_code == 2 and "declared twice" in result.errors[0]


def test_metric_values_are_found_where_the_table_says(tiny_sae_dir):
    from sae_audit.results.metric_info import document_metrics, metric_intervals, metric_items

    doc = {"metrics": {"g": {"label": "g", "higher_is_better": True, "scope": "pair", "suite": "s",
                             "path": ["deep", "g"], "interval": ["deep", "g_ci"], "floor": ["floor"]}},
           "saes": [{"datasets": {"a": {}, "b": {}}, "pairs": [{"id": "a", "ood": "b"}],
                     "suites": {"s": {"datasets": {"a": {}, "b": {}},
                                      "pairs": [{"id": "a", "ood": "b", "deep": {"g": 0.25, "g_ci": [0.2, 0.3]},
                                                 "floor": [0.0, 0.1]}]}}}]}
    info = document_metrics(doc)["g"]
    assert info.where == ("deep", "g") and info.suite == "s"
    assert metric_items(doc["saes"][0], info) == [("b", "a", 0.25)]
    assert metric_intervals(doc["saes"][0], info, "b") == ([0.2, 0.3], [0.0, 0.1])
    from sae_audit.report.metric_verdict import shifted

    from dataclasses import replace

    up, down = info, replace(info, higher_is_better=False)
    assert shifted([0.2, 0.3], [0.0, 0.1], up) is False and shifted([0.2, 0.3], [0.0, 0.1], down) is True
    assert shifted([0.05, 0.3], [0.0, 0.1], down) is False and shifted(None, [0.0, 0.1], down) is False
    assert shifted([0.2, 0.3], [0.0, 0.1], replace(info, shift=0)) is True  # a declared shift rule wins


def test_the_cli_restores_logging_after_each_call(sae_audit_plugins, tiny_image_folder):
    import logging

    logger = logging.getLogger("sae_audit")
    before = (list(logger.handlers), logger.level)
    assert sae_audit_plugins.run("sets").exit_code == 0
    assert (list(logger.handlers), logger.level) == before
    torch.manual_seed(0)  # nothing else leaks either: a second call behaves the same
    assert sae_audit_plugins.run("sets").stdout == sae_audit_plugins.run("sets").stdout
