"""The library owns its decisions: a request from Python gives what the CLI gives with the same settings,
and every CLI default is the request's own."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from sae_audit.audit import AuditRequest, AuditSettings, run_audit
from sae_audit.cli import build_parser, main
from sae_audit.data import ImageOptions
from sae_audit.errors import SaeAuditError
from sae_audit.models import ModelSpec
from sae_audit.train import CacheRequest, TrainConfig, TrainRequest, train_saes, write_activation_cache
from sae_audit.testing import make_image_folder

VOLATILE = {"created", "provenance", "tool"}


def comparable(results: dict) -> dict:
    out = {k: v for k, v in results.items() if k not in VOLATILE}
    out["settings"] = {k: v for k, v in results["settings"].items() if k != "wall_seconds"}
    return out


@pytest.fixture()
def ood_folder(tmp_path):
    return make_image_folder(tmp_path / "ood", n_per_class=3, classes=("a", "b"), seed=5)


def test_run_audit_request_equals_the_cli(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood_folder, tmp_path):
    out = tmp_path / "cli"
    assert main(["run", str(tiny_model_dir), "--sae", str(tiny_sae_dir), "--id", str(tiny_image_folder),
                 "--ood", str(ood_folder), "--out", str(out), "--device", "cpu", "--batch-size", "5",
                 "--suite", "k-robustness", "--suite", "ood-detection", "-q"]) == 0
    request = AuditRequest(
        model=ModelSpec(str(tiny_model_dir), device="cpu"), saes=(str(tiny_sae_dir),), id_set=str(tiny_image_folder),
        ood_sets=(str(ood_folder),), settings=AuditSettings(images=ImageOptions(batch_size=5)),
        suites=("k-robustness", "ood-detection"),
    )
    from_python = run_audit(request, progress=False)
    from_cli = json.loads((out / "results.json").read_text())
    assert comparable(json.loads(json.dumps(from_python))) == comparable(from_cli)


def test_train_request_equals_the_cli(tiny_model_dir, tiny_image_folder, tmp_path):
    flags = ["--hook", "block.1", "--data", str(tiny_image_folder), "--k", "4", "--expansion", "2",
             "--l1-l2-ratio", "0", "0.05", "--max-vectors", "96", "--eval-vectors", "32", "--sae-batch-size", "32",
             "--device", "cpu", "-q"]
    assert main(["train", str(tiny_model_dir), *flags, "--out", str(tmp_path / "cli")]) == 0
    request = TrainRequest(
        out=str(tmp_path / "py"), k=(4,), expansion=2.0, model=ModelSpec(str(tiny_model_dir), device="cpu"),
        data=str(tiny_image_folder), hook="block.1", l1_l2_ratio=(0.0, 0.05),
        optim=TrainConfig(max_vectors=96, eval_vectors=32, batch_size=32),
    )
    trained = train_saes(request, progress=False)
    assert [t.path.name for t in trained] == ["k4-off0-ratio0", "k4-off0-ratio0.05"]
    for t in trained:
        cli = tmp_path / "cli" / t.path.name
        assert json.loads((cli / "config.json").read_text()) == json.loads((t.path / "config.json").read_text())
        a, b = load_file(cli / "model.safetensors"), load_file(t.path / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_request_equals_the_cli(tiny_model_dir, tiny_image_folder, tmp_path):
    assert main(["cache", str(tiny_model_dir), "--hook", "block.2", "--data", str(tiny_image_folder),
                 "--out", str(tmp_path / "cli"), "--shard-rows", "50", "--device", "cpu", "-q"]) == 0
    cache = write_activation_cache(CacheRequest(model=ModelSpec(str(tiny_model_dir), device="cpu"), hook="block.2",
                                                data=str(tiny_image_folder), out=str(tmp_path / "py"),
                                                shard_rows=50), progress=False)
    cli_meta = json.loads((tmp_path / "cli" / "meta.json").read_text())
    assert cli_meta["shards"] == cache.meta["shards"] and cli_meta["rows"] == len(cache) == 12 * 16
    for s in cache.meta["shards"]:
        a = load_file(tmp_path / "cli" / s["file"])["activations"]
        assert torch.equal(a, load_file(cache.path / s["file"])["activations"])


def _defaults(parser, command: str) -> dict:
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[command]
    return {a.dest: a.default for a in sub._actions}


@pytest.mark.parametrize("command, pairs", [
    ("run", [("batch_size", ImageOptions, "batch_size"), ("seed", ImageOptions, "seed"),
             ("dense_threshold", AuditSettings, "dense_threshold"), ("bootstrap", AuditSettings, "bootstrap"),
             ("device", ModelSpec, "device"),
             ("dtype", ModelSpec, "dtype")]),
    ("train", [("lr", TrainConfig, "lr"), ("max_vectors", TrainConfig, "max_vectors"),
               ("eval_vectors", TrainConfig, "eval_vectors"), ("sae_batch_size", TrainConfig, "batch_size"),
               ("tokens", TrainRequest, "tokens"), ("normalise", TrainRequest, "normalisation"),
               ("precision", TrainConfig, "precision")]),
    ("cache", [("shard_rows", CacheRequest, "shard_rows"), ("cache_dtype", CacheRequest, "dtype"),
               ("batch_size", ImageOptions, "batch_size")]),
])
def test_cli_defaults_are_the_requests_own(command, pairs):
    defaults = _defaults(build_parser(), command)
    for dest, cls, name in pairs:
        field = {f.name: f for f in dataclasses.fields(cls)}[name]
        assert defaults[dest] == field.default, (command, dest)


def test_library_errors_name_fields_and_the_cli_names_flags(tiny_model_dir, tiny_sae_dir, tiny_image_folder,
                                                            tmp_path, capsys):
    with pytest.raises(SaeAuditError, match="`image_size`") as err:
        ModelSpec("x", image_size=0)
    assert err.value.field == "image_size"
    with pytest.raises(SaeAuditError, match="`batch_size`"):
        ImageOptions(batch_size=0)
    with pytest.raises(SaeAuditError, match="`expansion`"):
        TrainRequest(out="o", k=(4,), expansion=float("nan"), cache="c")
    assert main(["run", str(tiny_model_dir), "--sae", str(tiny_sae_dir), "--id", str(tiny_image_folder), "--ood",
                 str(tiny_image_folder) + "/", "--out", str(tmp_path / "o"), "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size must be" in err and "`" not in err


@pytest.mark.parametrize("value", [-1, 1, 19, 10_001, 2.5, True, "200"])
def test_bootstrap_is_zero_or_a_sane_number_of_replicates(value):
    from sae_audit.audit import AuditSettings

    with pytest.raises(SaeAuditError, match="`bootstrap` is 0 .* from 20 to 10000") as exc:
        AuditSettings(bootstrap=value)
    assert exc.value.field == "bootstrap"
    assert AuditSettings(bootstrap=0).as_json()["bootstrap"] == 0
    assert AuditSettings().bootstrap == 200
