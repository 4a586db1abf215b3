"""``report diff``: deltas, better/worse from each metric's direction, latents that moved most."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from sae_audit.cli import main
from sae_audit.report.diff import diff_results, render_diff_markdown
from tests.report.conftest import EVIL_SAE
from tests.report.htmlcheck import Page
from tests.report.test_render import markdown_to_html

REPO = Path(__file__).resolve().parents[2]


def perturbed(results: dict) -> dict:
    """B = A with known changes: FVU on the ID set +0.05 (worse), shared alive +0.1 (better), latent 7 silenced."""
    b = copy.deepcopy(results)
    s = b["saes"][0]
    id_name = b["datasets"][0]["name"]
    s["datasets"][id_name]["fvu"] += 0.05
    s["pairs"][0]["shared_alive"] += 0.1
    freqs = s["datasets"][id_name]["frequencies"]
    freqs[7] = 0.0
    return b


def change(d, sae, where, metric):
    return next(c for c in d.changes if c.sae == sae and c.where == where and c.metric == metric)


def test_deltas_and_judgements(results):
    a = results
    a["saes"][0]["datasets"][a["datasets"][0]["name"]]["frequencies"][7] = 0.5
    b = perturbed(a)
    d = diff_results(a, b)
    sae = a["saes"][0]["label"]
    id_name, ood = a["datasets"][0]["name"], a["datasets"][1]["name"]
    c = change(d, sae, id_name, "fvu")
    assert c.delta == pytest.approx(0.05) and c.judgement() == "worse"
    c = change(d, sae, f"{id_name} vs {ood}", "shared_alive")
    assert c.delta == pytest.approx(0.1) and c.judgement() == "better"
    assert change(d, sae, id_name, "n_inputs").judgement() == ""  # no direction
    assert change(d, a["saes"][1]["label"], id_name, "fvu").judgement() == "same"
    label, name, rows, caveat = next(x for x in d.latents if x[0] == sae and x[1] == id_name)
    assert rows[0]["latent"] == 7 and rows[0]["freq_a"] == 0.5 and rows[0]["freq_b"] == 0.0
    assert caveat == "same SAE weights in A and B"
    # Every other latent is unchanged, so it is the only one listed.
    assert len(rows) == 1


def test_unmatched_saes_and_sets_are_reported(results):
    b = copy.deepcopy(results)
    b["saes"][1]["label"] = "another SAE"
    b["datasets"][1]["content_hash"] = "sha256:" + "0" * 64
    d = diff_results(results, b, "old", "new")
    text = " ".join(d.notes)
    assert f"SAE {results['saes'][1]['label']} is only in old" in text and "another SAE is only in new" in text
    assert "different content" in text


def test_markdown_escapes_and_renders(results):
    md = render_diff_markdown(diff_results(results, perturbed(results)))
    page = Page(markdown_to_html(md))
    assert not page.find("script")
    assert EVIL_SAE in page.all_text
    assert len(page.tables) >= 3 and "worse" in page.all_text and "better" in page.all_text


def test_cli_diff_to_stdout_and_file(audit_dir, tmp_path, capsys):
    a = audit_dir / "results.json"
    b = tmp_path / "b.json"
    b.write_text(json.dumps(perturbed(json.loads(a.read_text()))))
    assert main(["report", "diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Audit diff") and "+0.050" in out
    assert main(["report", "diff", str(a), str(b), "--out", str(tmp_path / "d.md")]) == 0
    assert (tmp_path / "d.md").read_text() == out
    assert main(["report", "diff", str(a), str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", "diff", str(a), str(b), "--out", str(tmp_path)]) == 2


def test_cli_diff_never_replaces_an_existing_file_unasked(audit_dir, tmp_path, capsys):
    a = audit_dir / "results.json"
    b = tmp_path / "b.json"
    b.write_text(json.dumps(perturbed(json.loads(a.read_text()))))
    notes = tmp_path / "notes.md"
    notes.write_text("my own notes\n")
    assert main(["report", "diff", str(a), str(b), "--out", str(notes)]) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite" in err and "Traceback" not in err
    assert notes.read_text() == "my own notes\n"
    assert main(["report", "diff", str(a), str(b), "--out", str(notes), "--overwrite"]) == 0
    assert notes.read_text().startswith("# Audit diff")


def test_diff_runs_on_the_two_committed_real_audits(tmp_path):
    a, b = REPO / "reports/demo/results.json", REPO / "reports/examples/demo-200/results.json"
    assert main(["report", "diff", str(a), str(b), "--out", str(tmp_path / "diff.md")]) == 0
    text = (tmp_path / "diff.md").read_text()
    assert text.count("## k16-off0-ratio0") == 2  # both SAEs matched by label
    assert "| image sets |" in text and "200 images" in text
