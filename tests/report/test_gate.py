"""``--fail-on`` conditions, exit codes 0/1/2/3 and the JSON summary of ``sae-audit run``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sae_audit.cli import main
from sae_audit.errors import SaeAuditError
from sae_audit.results.gate import evaluate, parse_condition
from sae_audit.testing import make_image_folder


def test_conditions_hold_exactly_where_the_numbers_say(results):
    gaps = [p["fvu_gap"] for s in results["saes"] for p in s["pairs"]]
    lo, hi = min(gaps), max(gaps)
    ood = results["datasets"][1]["name"]
    conds = [parse_condition(t) for t in (f"fvu_gap>{hi}", f"fvu_gap>={hi}", f"fvu_gap<{lo}", f"fvu_gap<={lo}",
                                          f"fvu_gap [{ood}] > {lo - 1}", "n_ood_only>=0", "fvu>100")]
    evaluate(conds, results)
    assert [c.holds for c in conds] == [False, True, False, True, True, True, False]
    assert conds[1].matches[0]["value"] == hi
    assert len(conds[5].matches) == len(results["saes"])  # one pair per SAE


@pytest.mark.parametrize("text, fragment", [
    ("fvu_gap", r"expected METRIC\[SET\] OP NUMBER"),
    ("fvu_gap=>0.2", "expected METRIC"),
    ("fvu_gapp>0.2", "unknown metric 'fvu_gapp'; known:"),
    ("fvu>abc", "expected METRIC"),
])
def test_bad_conditions(text, fragment):
    with pytest.raises(SaeAuditError, match=fragment):
        parse_condition(text)


def run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood, out, *extra):
    return ["run", str(tiny_model_dir), "--sae", str(tiny_sae_dir), "--id", str(tiny_image_folder), "--ood", str(ood),
            "--out", str(out), "--device", "cpu", "-q", *extra]


def test_exit_codes_and_json_summary(tiny_model_dir, tiny_sae_dir, tiny_image_folder, tmp_path, capsys):
    ood = make_image_folder(tmp_path / "ood", n_per_class=2, classes=("a",), seed=3)
    args = run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood, tmp_path / "a", "--format", "json",
                    "--fail-on", "fvu_gap>1000", "--fail-on", "alive_fraction>=0")
    assert main(args) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["exit_code"] == 1
    assert [c["holds"] for c in summary["fail_on"]] == [False, True]
    results = json.loads((tmp_path / "a" / "results.json").read_text())  # the reports are still written
    s = results["saes"][0]
    assert summary["saes"][0]["pairs"][0]["fvu_gap"] == s["pairs"][0]["fvu_gap"]
    assert summary["verdict"] and "holds" in captured.err
    assert (tmp_path / "a" / "report.html").is_file()

    assert main(run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood, tmp_path / "b",
                         "--fail-on", "fvu_gap>1000")) == 0
    assert capsys.readouterr().out == ""  # text mode: nothing on stdout

    # A usage error is caught before any work, and nothing is written.
    assert main(run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood, tmp_path / "c",
                         "--fail-on", "fvu_gap>>1")) == 2
    assert main(run_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood, tmp_path / "c",
                         "--fail-on", "fvu[nope]>1")) == 2
    assert "no image set 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_internal_error_exits_3_with_a_traceback(audit_dir, tmp_path, monkeypatch, capsys):
    import sae_audit.report

    def bug(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(sae_audit.report, "write_reports", bug)
    assert main(["report", "render", str(audit_dir / "results.json"), "--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error" in err


def test_exit_code_2_from_a_subprocess_has_no_traceback(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"schema_version": 1}))
    p = subprocess.run([sys.executable, "-m", "sae_audit.cli", "report", "render", str(tmp_path / "x.json"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "does not match the results schema v2 at $:" in p.stderr
