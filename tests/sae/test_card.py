"""One model-card builder: save_pretrained, push_to_hub and ``sae-audit train`` write the same front matter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sae_audit.hookspecs import hookimpl
from sae_audit.sae import SAEConfig, TopKSAE, build_sae
from sae_audit.sae.card import TrainingInfo, card_metadata, model_card
from sae_audit.train import TrainConfig, TrainSummary, sae_card
from sae_audit.train.card import card_metrics


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


class LicencePlugin:
    @hookimpl
    def sae_audit_card_metadata(self, config, dataset):
        return {"license": "apache-2.0", "tags": ["my-audit"]}


@pytest.mark.parametrize("model", ["facebook/dinov2-small", ".cache/models/dinov2", None])
def test_save_pretrained_push_and_train_cards_share_their_front_matter(model, sae_audit_plugins, tmp_path):
    sae_audit_plugins.register(LicencePlugin(), "licence")
    config = SAEConfig(d_in=8, d_sae=32, k=4, lambda_ratio=0.01, model=model, hook_point="block.8", tokens="patch",
                       normalisation="scalar", norm_scale=0.5)
    sae = TopKSAE(config, seed=1)
    summary = TrainSummary(steps=12, vectors=1200, eval_vectors=300, eval_fvu=0.25, eval_l0=3.5,
                           eval_effective_units=2.75, dead_fraction=0.125, final_train_nmse=0.3)
    trained = sae_card(config, summary, TrainConfig(batch_size=100), {"name": "fashion-mnist:train", "size": 60},
                       n_skipped=2, seconds=9.0)
    saved = (sae.save_pretrained(tmp_path / "s", metrics=card_metrics(summary)) / "README.md").read_text()

    uploaded = {}

    class Api:
        def create_repo(self, *a, **kw):
            pass

        def upload_folder(self, *, folder_path, **kw):
            uploaded["card"] = (Path(folder_path) / "README.md").read_text()

    sae.push_to_hub("me/saes", api=Api(), metrics=card_metrics(summary))

    meta = front_matter(trained)
    assert front_matter(saved) == front_matter(uploaded["card"]) == meta
    assert meta["tags"] == ["sparse-autoencoder", "interpretability", "top-k-sae", "my-audit"]
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "sae-audit"
    assert meta["sae_config"] == config.to_dict()
    assert meta["metrics"] == {"heldout_fvu": 0.25, "heldout_l0": 3.5, "heldout_effective_units": 2.75,
                               "dead_fraction": 0.125, "heldout_vectors": 300, "training_vectors": 1200, "steps": 12}
    assert meta.get("base_model") == (model if model == "facebook/dinov2-small" else None)
    # The bodies differ only by the training section.
    assert "## Held-out evaluation" in trained and "| FVU (variance about the mean) | 0.2500 |" in trained
    assert "Training took 9 s." in trained and "2 unreadable skipped" in trained
    assert "Held-out" not in saved
    assert saved.split("---\n", 2)[2] in trained


@pytest.mark.parametrize("model,base_model", [
    ("tiny", "tiny"), ("facebook/dinov2-small", "facebook/dinov2-small"), (".cache/models/x", None),
    ("/abs/path", None), ("org/name/sub", None), ("~/models/x", None), (None, None),
])
def test_base_model_only_for_hub_ids(model, base_model, sae_audit_plugins):
    meta = card_metadata(SAEConfig(d_in=4, d_sae=8, k=2, model=model))
    assert meta.get("base_model") == base_model


@pytest.mark.parametrize("arch,tag,title", [("topk", "top-k-sae", "# Top-k SAE"), ("jumprelu", "jumprelu-sae", "# JumpReLU SAE"),
                                            ("relu", "relu-sae", "# ReLU SAE")])
def test_architecture_tag_and_title(arch, tag, title, sae_audit_plugins, tmp_path):
    sae = build_sae(SAEConfig(d_in=4, d_sae=8, k=8, architecture=arch, model="tiny"))
    text = (sae.save_pretrained(tmp_path / arch) / "README.md").read_text()
    assert front_matter(text)["tags"] == ["sparse-autoencoder", "interpretability", tag]
    assert f"\n{title} for `tiny` at an unrecorded hook point\n" in text
    assert "metrics" not in front_matter(text)


def test_training_card_needs_the_training_metrics():
    config = SAEConfig(d_in=4, d_sae=8, k=2)
    with pytest.raises(ValueError, match="heldout_l0"):
        model_card(config, {"heldout_fvu": 0.1}, training=TrainingInfo(batch_size=8, lr=1e-3))


def test_tensor_and_numpy_metrics_become_plain_numbers(sae_audit_plugins):
    import numpy as np

    metrics = {"a": torch.tensor(0.5), "b": np.float32(0.25), "c": 3, "d": np.float64(0.5), "e": np.int64(7)}
    meta = card_metadata(SAEConfig(d_in=4, d_sae=8, k=2), metrics)
    assert meta["metrics"] == {"a": 0.5, "b": 0.25, "c": 3, "d": 0.5, "e": 7}
    assert all(type(v) in (int, float) for v in meta["metrics"].values())
    assert front_matter(model_card(SAEConfig(d_in=4, d_sae=8, k=2), metrics))["metrics"] == meta["metrics"]
