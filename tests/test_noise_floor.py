"""Intervals, the ID-vs-ID noise floor and the verdict through ``sae-audit run`` (tiny model, real image files)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sae_audit.cli import main
from sae_audit.errors import SaeAuditError
from sae_audit.report import render_reports
from sae_audit.results import load_results
from sae_audit.results.gate import evaluate, parse_condition
from sae_audit.testing import make_image_folder, make_tiny_model_dir, make_tiny_sae_dir
from sae_audit.suites import known_metrics

REPO = Path(__file__).resolve().parents[1]


def stripes(folder: Path, n: int = 45) -> Path:
    """Another distribution: green images with white stripes."""
    (folder / "x").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        arr = np.zeros((40, 40, 3), np.uint8)
        arr[:, :, 1] = rng.integers(150, 255)
        arr[::4] = 255
        Image.fromarray(arr).save(folder / "x" / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    """ID and ``same`` are two disjoint sets drawn from one distribution; ``other`` is another distribution."""
    root = tmp_path_factory.mktemp("floor")
    model, sae = make_tiny_model_dir(root / "model"), make_tiny_sae_dir(root / "sae")
    ids = make_image_folder(root / "id", n_per_class=15, seed=0)
    same = make_image_folder(root / "same", n_per_class=15, seed=1)
    other = stripes(root / "other")
    out = root / "out"
    args = ["run", str(model), "--sae", str(sae), "--id", str(ids), "--ood", str(same), "--ood", str(other),
            "--out", str(out), "--device", "cpu", "-q", "--suite", "ood-detection", "--suite", "fidelity"]
    assert main(args) == 0
    return {"root": root, "model": model, "sae": sae, "id": ids, "same": same, "other": other, "out": out,
            "results": json.loads((out / "results.json").read_text())}


def _pairs(sae: dict, ood: str):
    yield next(p for p in sae["pairs"] if p["ood"] == ood)
    for entry in sae["suites"].values():
        yield from (p for p in entry.get("pairs", []) if p["ood"] == ood)


def test_two_sets_of_one_distribution_are_not_shifted_and_every_auroc_covers_chance(audit):
    s = audit["results"]["saes"][0]
    assert s["noise_floor"]["n_images"] == [22, 23]
    flags = {k: v for p in _pairs(s, "same") for k, v in p["shifted"].items()}
    assert len(flags) == 12 and not any(flags.values()), flags
    aurocs = {k: v for p in _pairs(s, "same") for k, v in p["intervals"].items() if k.startswith("auroc_")}
    assert set(aurocs) == {"auroc_fvu", "auroc_l0", "auroc_effective_units", "auroc_rarity", "auroc_output_distance"}
    for key, (lo, hi) in aurocs.items():
        assert lo <= 0.5 <= hi, key
    # every metric carries an interval beside its value, in one shape
    for name, d in s["datasets"].items():
        assert set(d["intervals"]) >= {"fvu", "explained_variance", "alive_fraction", "dead_fraction",
                                       "dense_fraction", "l0_mean", "effective_units_mean"}
        lo, hi = d["intervals"]["fvu"]
        assert lo <= d["fvu"] <= hi


def test_another_distribution_is_shifted_beyond_the_floor(audit):
    s = audit["results"]["saes"][0]
    pair = next(p for p in s["pairs"] if p["ood"] == "other")
    assert pair["shifted"]["fvu_gap"] and pair["shifted"]["js_divergence"]
    assert pair["intervals"]["fvu_gap"][0] > s["noise_floor"]["intervals"]["fvu_gap"][1]
    assert pair["floor"]["fvu_gap"] == s["noise_floor"]["intervals"]["fvu_gap"]  # the floor beside the value
    table = audit["results"]["metrics"]
    assert table["fvu_gap"]["interval"] == ["intervals", "fvu_gap"] and table["fvu_gap"]["floor"] == ["floor", "fvu_gap"]
    assert table["fvu_gap"]["shift"] == 1 and table["spearman"]["shift"] == -1 and table["auroc_rarity"]["shift"] == 0
    assert "interval" not in table["n_inputs"]
    assert pair["js_top_latents"][0]["share"] > 0 and pair["js_latents_for_half"] >= 1


def test_report_and_json_summary_carry_the_verdict(audit, tmp_path, capsys):
    md = render_reports(audit["results"], formats=("md",))["report.md"]
    summary = md[md.index("## Summary"):md.index("## SAEs")]
    assert "other (OOD): sae (fixed-k, k=4): shifted beyond the noise floor on" in summary
    assert "same (OOD): sae (fixed-k, k=4): not shifted beyond the noise floor on any metric" in summary
    assert "downstream fidelity gap" in summary and "carry" in summary and "in its 95% interval" not in summary
    assert "Noise floor: the same metrics between two disjoint halves of id (22 and 23 images)" in summary
    assert "Verdict: shift beyond the ID-vs-ID noise floor" in summary
    assert "ID-vs-ID floor" in md and "shifted?" in md
    r = audit
    args = ["run", str(r["model"]), "--sae", str(r["sae"]), "--id", str(r["id"]), "--ood", str(r["other"]),
            "--out", str(tmp_path / "j"), "--device", "cpu", "-q", "--format", "json", "--bootstrap", "20",
            "--fail-on", "shifted[other]", "--fail-on", "fvu_gap.low[other]>1000"]
    assert main(args) == 1
    out = json.loads(capsys.readouterr().out)
    row = out["shift"][0]
    assert row["ood"] == "other" and "fvu_gap" in row["shifted"]
    assert row["metrics"]["fvu_gap"]["interval"][0] > row["metrics"]["fvu_gap"]["floor_interval"][1]
    assert [c["holds"] for c in out["fail_on"]] == [True, False]
    assert "fvu_gap" in out["fail_on"][0]["matches"][0]["metrics"]


def test_the_first_screen_table_carries_the_verdict(audit):
    """The report's first table (issue 14's glance table) says per OOD set what the flags of the results say."""
    from sae_audit.report.glance import verdict_table

    results = audit["results"]
    s = results["saes"][0]
    t = verdict_table(results)
    cells = dict(zip(t.header[2:], t.rows[0][2:]))
    flags = {p["ood"]: p["shifted"] for p in s["pairs"]}
    for name, entry in s["suites"].items():
        for p in entry.get("pairs") or []:
            flags[p["ood"]] = {**flags[p["ood"]], **(p.get("shifted") or {})}
    n_other = sum(v is True for v in flags["other"].values())
    assert cells["other (OOD)"].startswith(f"SHIFTED on {n_other} of {len(flags['other'])} metrics")
    assert cells["same (OOD)"].startswith(f"not shifted on any of {len(flags['same'])} metrics")
    pair = next(p for p in s["pairs"] if p["ood"] == "other")
    shown = re.search(r"FVU gap (\S+) \[(\S+), (\S+)\] \(floor (\S+) \[(\S+), (\S+)\]\): SHIFTED", cells["other (OOD)"])
    floor = s["noise_floor"]
    assert [float(v) for v in shown.groups()] == pytest.approx(
        [pair["fvu_gap"], *pair["intervals"]["fvu_gap"], floor["fvu_gap"], *floor["intervals"]["fvu_gap"]], abs=6e-4)
    assert "fidelity gap" in cells["other (OOD)"] and "carried by latents" in cells["other (OOD)"]


def test_fail_on_interval_bounds_shifted_flags_and_suite_metrics(audit):
    results = audit["results"]
    s = results["saes"][0]
    low = next(p for p in s["pairs"] if p["ood"] == "other")["intervals"]["fvu_gap"][0]
    rarity = next(p for p in s["suites"]["ood-detection"]["pairs"] if p["ood"] == "other")["auroc_rarity"]
    texts = [f"fvu_gap.low[other]>{low - 1e-6}", f"fvu_gap[other].low>{low + 1e-6}", "fvu_gap.high[same]<-1",
             "shifted[other]", "shifted[same]", "shifted.js_divergence", "shifted.auroc_fvu[same]",
             f"auroc_rarity[other]>={rarity}", "fidelity[id]>-100", "shifted"]
    conds = evaluate([parse_condition(t, known_metrics()) for t in texts], results)
    assert [c.holds for c in conds] == [True, False, False, True, False, True, False, True, True, True]
    assert conds[0].matches[0]["value"] == low
    with pytest.raises(SaeAuditError, match="not a pair metric with a noise floor"):
        parse_condition("shifted.fvu[other]", known_metrics())
    with pytest.raises(SaeAuditError, match="name the interval bound once"):
        parse_condition("fvu_gap.low[other].high>1")
    with pytest.raises(SaeAuditError, match="qualify it with an OOD set"):
        evaluate([parse_condition("shifted[id]")], results)


def test_an_id_set_too_small_to_split_still_audits_with_the_floor_unavailable(audit, tmp_path):
    small = make_image_folder(tmp_path / "small", n_per_class=4)  # 12 images
    out = tmp_path / "o"
    assert main(["run", str(audit["model"]), "--sae", str(audit["sae"]), "--id", str(small), "--ood",
                 str(audit["other"]), "--out", str(out), "--device", "cpu", "-q", "--suite", "ood-detection"]) == 0
    results = json.loads((out / "results.json").read_text())
    s = results["saes"][0]
    why = s["noise_floor"]["unavailable"]
    assert "has 12 image(s)" in why and "at least 20 (10 in each half)" in why
    assert s["suites"]["ood-detection"]["noise_floor"]["unavailable"] == why
    assert set(s["pairs"][0]["shifted"].values()) == {None}
    assert s["pairs"][0]["intervals"]["fvu_gap"] is not None  # the intervals themselves are still there
    md = render_reports(results, formats=("md",))["report.md"]
    assert "no verdict (noise floor unavailable: the ID set" in md


@pytest.mark.parametrize("value, fragment", [("-1", "from 20 to 10000, got -1"), ("5", "cannot place a 2.5th"),
                                             ("20000", "from 20 to 10000, got 20000")])
def test_bootstrap_out_of_bounds_is_refused_with_the_limit(audit, tmp_path, capsys, value, fragment):
    args = ["run", str(audit["model"]), "--sae", str(audit["sae"]), "--id", str(audit["id"]), "--ood",
            str(audit["other"]), "--out", str(tmp_path / "o"), "--device", "cpu", "-q", "--bootstrap", value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert fragment in err and "--bootstrap" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_bootstrap_off_gives_no_intervals_and_refuses_conditions_that_need_them(audit, tmp_path, capsys):
    base = ["run", str(audit["model"]), "--sae", str(audit["sae"]), "--id", str(audit["id"]), "--ood",
            str(audit["other"]), "--device", "cpu", "-q", "--bootstrap", "0"]
    assert main(base + ["--out", str(tmp_path / "a"), "--fail-on", "shifted[other]"]) == 2
    assert "needs intervals, but --bootstrap is 0" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b"), "--fail-on", "auroc_rarity>0.9"]) == 2
    assert "is a metric of suite 'ood-detection'" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "c")]) == 0
    results = json.loads((tmp_path / "c" / "results.json").read_text())
    s = results["saes"][0]
    assert results["settings"]["bootstrap"] == 0
    assert "intervals" not in s["datasets"]["id"] and "intervals" not in s["pairs"][0]
    assert set(s["pairs"][0]["shifted"].values()) == {None}
    md = render_reports(results, formats=("md",))["report.md"]
    assert "Intervals were turned off (bootstrap 0)" in md


def as_version_1(doc):
    """What sae-audit wrote before intervals existed: no intervals, shift flags, floors or bootstrap setting."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()
                    if k not in ("intervals", "shifted", "noise_floor", "js_top_latents", "js_latents_for_half")}
        return [strip(v) for v in x] if isinstance(x, list) else x

    old = strip(doc)
    old["schema_version"] = 1
    old["settings"].pop("bootstrap", None)
    for s in old["saes"]:
        s.pop("suites", None)
    return old


def test_an_older_results_file_renders_with_intervals_shown_as_unavailable(audit, tmp_path):
    import jsonschema

    from sae_audit.results import schema

    old = as_version_1(audit["results"])
    jsonschema.validate(old, schema(1), cls=jsonschema.Draft202012Validator)  # a genuine version-1 document
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    results = load_results(path)
    assert results["schema_version"] == 2 and results["upgraded_from"] == 1
    assert "results schema 1" in results["saes"][0]["noise_floor"]["unavailable"]
    md = render_reports(results, formats=("md",))["report.md"]
    assert "without intervals or a noise floor (results schema 1)" in md
    assert r"\[n/a\]" in md and "no verdict (noise floor unavailable" in md
    assert main(["report", "render", str(path), "--out", str(tmp_path / "r")]) == 0
    html = (tmp_path / "r" / "report.html").read_text()
    assert "[n/a]" in html and "results schema 1" in html


def test_shifted_is_refused_when_the_id_set_cannot_give_a_noise_floor(audit, tmp_path, capsys):
    """A gate on ``shifted`` that could never fire must not pass silently (exit 2, nothing written)."""
    small = make_image_folder(tmp_path / "small", n_per_class=4)  # 12 images: too few to split
    out = tmp_path / "o"
    args = ["run", str(audit["model"]), "--sae", str(audit["sae"]), "--id", str(small), "--ood",
            str(audit["other"]), "--out", str(out), "--device", "cpu", "-q", "--fail-on", "shifted"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "needs the ID-vs-ID noise floor" in err and "has 12 image(s)" in err and "Traceback" not in err
    assert not out.exists()


def test_shifted_on_results_without_any_verdict_cannot_be_judged(audit):
    """Results whose floor turned out unavailable (e.g. unreadable ID images) cannot answer ``shifted``."""
    import copy

    results = copy.deepcopy(audit["results"])
    for s in results["saes"]:
        s["noise_floor"] = {"unavailable": "the ID set 'id' gave 12 readable image(s)"}
        for p in s["pairs"] + [p for e in s["suites"].values() for p in e.get("pairs", [])]:
            p["shifted"] = {k: None for k in p.get("shifted") or {}}
    with pytest.raises(SaeAuditError, match="cannot be judged: the noise floor is unavailable .the ID set 'id' gave 12"):
        evaluate([parse_condition("shifted[other]", known_metrics())], results)
    assert evaluate([parse_condition("fvu_gap[other]>-100", known_metrics())], results)[0].holds  # others still run
