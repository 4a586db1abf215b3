"""The results document: schema, validation messages, upgrade-or-explain, provenance."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from importlib import resources

import jsonschema
import pytest

from sae_audit.errors import SaeAuditError
from sae_audit.results.metric_info import METRICS
from sae_audit.results.document import (
    RESULTS_SCHEMA_VERSION,
    dataset_fingerprint,
    files_sha256,
    load_results,
    schema,
    validate_results,
)


def write(tmp_path, doc, name="results.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def test_schema_file_is_shipped_and_is_a_valid_draft_2020_12_schema():
    text = resources.files("sae_audit.results").joinpath(f"schema/results-v{RESULTS_SCHEMA_VERSION}.json").read_text()
    doc = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc == schema()


def test_written_results_validate_against_the_schema_with_jsonschema_directly(results):
    jsonschema.validate(results, schema(), cls=jsonschema.Draft202012Validator)
    assert results["schema_version"] == 2


def test_provenance_is_complete(results, audit_dir):
    prov = results["provenance"]
    import torch
    import transformers

    assert prov["packages"]["torch"] == torch.__version__.split("+")[0] or prov["packages"]["torch"] == torch.__version__
    assert prov["packages"]["transformers"] == transformers.__version__
    assert prov["seeds"] == {"subset": 0}
    assert prov["command"].startswith("sae-audit run ")
    assert results["model"]["revision"].startswith("sha256:")
    assert results["model"]["device"] == "cpu" and results["model"]["dtype"] == "float32"
    assert results["created"].endswith("+00:00")
    for d in results["datasets"]:
        assert d["content_hash"].startswith("sha256:") and "file sizes" in d["content_hash_of"]


def test_sae_weights_hash_matches_sha256sum(results):
    for s in results["saes"]:
        out = subprocess.run(["sha256sum", "model.safetensors"], cwd=s["spec"], capture_output=True, text=True,
                             check=True).stdout.split()[0]
        assert s["weights_sha256"] == "sha256:" + out


def test_files_sha256_of_several_files_is_the_hash_of_the_sha256sum_listing(tmp_path):
    (tmp_path / "b.safetensors").write_bytes(b"bbb")
    (tmp_path / "a.safetensors").write_bytes(b"a")
    listing = subprocess.run("sha256sum *.safetensors", shell=True, cwd=tmp_path, capture_output=True,
                             text=True, check=True).stdout
    assert files_sha256(tmp_path) == "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
    assert files_sha256(tmp_path / "nothing-here") is None


def test_dataset_hash_changes_with_content_and_not_between_reads(tiny_image_folder):
    from sae_audit.data import open_image_set

    h1 = dataset_fingerprint(open_image_set(str(tiny_image_folder)))
    assert h1 == dataset_fingerprint(open_image_set(str(tiny_image_folder)))
    victim = next(tiny_image_folder.rglob("*.png"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert dataset_fingerprint(open_image_set(str(tiny_image_folder))) != h1


def test_every_reported_metric_says_whether_higher_is_better(results):
    meta = results["metrics"]
    for s in results["saes"]:
        for stats in s["datasets"].values():
            for key in ("fvu", "alive_fraction", "dead_fraction", "explained_variance"):
                assert key in stats and isinstance(meta[key]["higher_is_better"], bool)
        for key in ("fvu_gap", "shared_alive", "js_divergence", "spearman"):
            assert isinstance(meta[key]["higher_is_better"], bool)
    assert meta["fvu"]["higher_is_better"] is False and meta["shared_alive"]["higher_is_better"] is True
    assert set(meta) == set(METRICS)


@pytest.mark.parametrize("mutate, path", [
    (lambda d: d["saes"][1]["datasets"]["id"].__setitem__("fvu", "high"), "$.saes[1].datasets.id.fvu"),
    (lambda d: d["datasets"][0].__setitem__("role", "train"), "$.datasets[0].role"),
    (lambda d: d["model"].pop("d_model"), "$.model"),
    (lambda d: d["saes"][0]["pairs"][0].__setitem__("n_ood_only", -1), "$.saes[0].pairs[0].n_ood_only"),
    (lambda d: d.__setitem__("saes", []), "$.saes"),
])
def test_schema_errors_name_the_json_path_of_the_first_error(results, tmp_path, mutate, path):
    doc = copy.deepcopy(results)
    mutate(doc)
    with pytest.raises(SaeAuditError) as e:
        load_results(write(tmp_path, doc))
    assert f"at {path}:" in str(e.value)


def test_json_path_quotes_keys_that_are_not_identifiers(results):
    doc = copy.deepcopy(results)
    name = doc["datasets"][1]["name"]
    doc["saes"][0]["datasets"][name]["alive_fraction"] = 2.0
    with pytest.raises(SaeAuditError) as e:
        validate_results(doc)
    assert f"at $.saes[0].datasets[{json.dumps(name)}].alive_fraction: 2.0 is greater than" in str(e.value)


def test_cross_field_rules(results):
    doc = copy.deepcopy(results)
    doc["datasets"][1]["role"] = "id"
    with pytest.raises(SaeAuditError, match="exactly one 'id' set"):
        validate_results(doc)
    doc = copy.deepcopy(results)
    doc["saes"][0]["pairs"] = []
    with pytest.raises(SaeAuditError, match=r"\$\.saes\[0\]\.pairs has no ID/OOD comparison"):
        validate_results(doc)


def test_newer_schema_version_says_upgrade_sae_audit(results, tmp_path):
    doc = dict(results, schema_version=RESULTS_SCHEMA_VERSION + 1)
    with pytest.raises(SaeAuditError, match="written by a newer sae-audit.*upgrade sae-audit"):
        load_results(write(tmp_path, doc))


def test_older_schema_version_without_upgrade_path_says_why(results, tmp_path):
    with pytest.raises(SaeAuditError, match="no upgrade from it.*re-run the audit"):
        load_results(write(tmp_path, dict(results, schema_version=0)))
    with pytest.raises(SaeAuditError, match="must be an integer"):
        load_results(write(tmp_path, dict(results, schema_version="1")))


def test_an_older_version_is_upgraded_through_the_registered_steps(results, tmp_path, monkeypatch):
    from sae_audit.results import document as mod

    old = copy.deepcopy(results)
    old["schema_version"] = 0
    old["model"]["n_layers"] = old["model"].pop("num_blocks")  # a made-up rename between versions

    def v0_to_v1(doc):
        doc["model"]["num_blocks"] = doc["model"].pop("n_layers")
        return dict(doc, schema_version=1)

    monkeypatch.setitem(mod.UPGRADERS, 0, v0_to_v1)
    loaded = load_results(write(tmp_path, old))
    assert loaded["model"]["num_blocks"] == results["model"]["num_blocks"]


def test_results_from_before_the_metrics_block_get_it_on_load(results, tmp_path):
    doc = copy.deepcopy(results)
    del doc["metrics"], doc["provenance"]
    assert load_results(write(tmp_path, doc))["metrics"]["fvu"]["higher_is_better"] is False


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not a readable JSON file"),
    ("[1, 2]", "not an sae-audit results file"),
])
def test_unreadable_files(tmp_path, content, fragment):
    p = tmp_path / "r.json"
    p.write_text(content)
    with pytest.raises(SaeAuditError, match=fragment):
        load_results(p)
    with pytest.raises(SaeAuditError, match="does not exist"):
        load_results(tmp_path / "missing.json")
    with pytest.raises(SaeAuditError, match="is a folder"):
        load_results(tmp_path)
