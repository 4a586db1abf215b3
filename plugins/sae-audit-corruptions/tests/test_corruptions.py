"""sae-audit-corruptions: each corruption against an independent reference, the set
family, and the plugin end to end through the real sae-audit command line, in
process: registered in a sandbox (``sae_audit_plugins``), and as installed (``installed``).

Run after `pip install ./plugins/sae-audit-corruptions`; the fixtures (tiny
model, SAE and image folder, the plugin sandbox, ``installed``) come from
sae-audit's pytest plugin (``sae_audit.testing``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import sae_audit_corruptions.plugin
from sae_audit.data import open_image_set
from sae_audit.errors import SaeAuditError
from sae_audit_corruptions import CORRUPTIONS, CorruptedSet, corrupt, parse_spec


def pattern(size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    a = np.stack([(yy * 4) % 256, (xx * 4) % 256, ((xx + yy) * 2) % 256], -1).astype(np.uint8)
    a[size // 3: 2 * size // 3, size // 3: 2 * size // 3] = 255
    return a


@pytest.fixture()
def corruptions(sae_audit_plugins):
    """The plugin registered in a sandbox: what these tests see does not depend on what is installed."""
    sae_audit_plugins.register(sae_audit_corruptions.plugin, "corruptions")
    return sae_audit_plugins


def test_the_installed_plugin_is_discovered_through_its_entry_point(installed):
    p = installed.plugin("corruptions")
    assert p is not None, "install the plugin first: pip install ./plugins/sae-audit-corruptions"
    assert (p.distribution, p.version) == ("sae-audit-corruptions", "0.1.0")
    assert p.hooks == ["sae_audit_register_commands", "sae_audit_register_image_sets",
                       "sae_audit_register_report_sections"]
    assert installed.failures == []
    from sae_audit.data.registry import image_sets

    assert image_sets()["corrupt"].value.family
    listed = installed.run("sets")
    assert listed.exit_code == 0 and "corrupt:..." in listed.stdout and "[plugin corruptions]" in listed.stdout


def clipped_normal_std(mu: float, sigma: float) -> float:
    """Std of clip(mu + sigma Z, 0, 1), Z standard normal, by numerical integration (scipy)."""
    from scipy import integrate, stats

    def moment(p):
        inner = integrate.quad(lambda y: y**p * stats.norm.pdf(y, mu, sigma), 0, 1)[0]
        return inner + stats.norm.sf(1, mu, sigma)  # mass clipped to 1 (mass clipped to 0 adds 0)

    return (moment(2) - moment(1) ** 2) ** 0.5


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_gaussian_noise_has_the_imagenet_c_std(severity):
    grey = Image.fromarray(np.full((128, 128, 3), 128, np.uint8))
    y = np.asarray(corrupt(grey, "gaussian_noise", severity), float) / 255
    c = CORRUPTIONS["gaussian_noise"][1][severity - 1]
    assert abs(y.mean() - 128 / 255) < 0.01
    assert y.std() == pytest.approx(clipped_normal_std(128 / 255, c), rel=0.03)


def test_gaussian_noise_is_seeded():
    img = Image.fromarray(pattern())
    a, b, c = (np.asarray(corrupt(img, "gaussian_noise", 2, seed=s)) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_gaussian_blur_matches_scipy(severity):
    a = pattern()
    sigma = CORRUPTIONS["gaussian_blur"][1][severity - 1]
    out = np.asarray(corrupt(Image.fromarray(a), "gaussian_blur", severity), float)
    ref = np.stack([ndimage.gaussian_filter(a[..., k].astype(float), sigma, mode="nearest") for k in range(3)], -1)
    inner = slice(12, 52)  # away from the borders, where edge handling differs
    err = np.abs(out - ref)[inner, inner]
    assert err.max() <= 4 and err.mean() < 1.0


def test_jpeg_degrades_monotonically_with_severity():
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.integers(0, 256, (96, 96, 3)).astype(float), (2, 2, 0)).astype(np.uint8)
    img = Image.fromarray(a)
    mse = [np.mean((np.asarray(corrupt(img, "jpeg", s), float) - a) ** 2) for s in range(1, 6)]
    assert all(m > 0 for m in mse)
    assert mse == sorted(mse), mse  # quality 25 > 18 > 15 > 10 > 7


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_contrast_scales_deviation_about_the_channel_mean(severity):
    a = pattern().astype(float)
    out = np.asarray(corrupt(Image.fromarray(a.astype(np.uint8)), "contrast", severity), float)
    c = CORRUPTIONS["contrast"][1][severity - 1]
    for k in range(3):
        assert out[..., k].mean() == pytest.approx(a[..., k].mean(), abs=0.6)
        assert out[..., k].std() == pytest.approx(c * a[..., k].std(), abs=0.6)


@pytest.mark.parametrize("bad", ["gaussian_noise:0:digits", "gaussian_noise:6:digits", "gaussian_noise:x:digits",
                                 "fog:3:digits", "gaussian_noise:3", "gaussian_noise"])
def test_bad_specs_say_what_is_wrong(bad):
    with pytest.raises(SaeAuditError, match="corrupt|severity|KIND"):
        parse_spec(bad)


def test_corrupted_set_keeps_labels_and_is_deterministic(corruptions, tiny_image_folder):
    base = open_image_set(tiny_image_folder)
    s = open_image_set(f"corrupt:contrast:4:{tiny_image_folder}")
    assert isinstance(s, CorruptedSet)
    assert s.name == "corrupt:contrast:4:images" == f"corrupt:contrast:4:{base.name}"  # short: no full path
    assert s.base.name == base.name and s.registered_by == "corruptions"
    assert len(s) == len(base) == 12 and s.classes == base.classes
    assert [s.label(i) for i in range(len(s))] == [base.label(i) for i in range(len(base))]
    assert [s.item_file(i) for i in range(len(s))] == [base.item_file(i) for i in range(len(base))]
    assert np.array_equal(np.asarray(s.load(3)), np.asarray(s.load(3)))
    assert s.describe()["corruption"]["parameter"] == 0.1
    with pytest.raises(SaeAuditError, match="severity"):
        open_image_set(f"corrupt:contrast:9:{tiny_image_folder}")


def test_the_content_hash_follows_the_base(corruptions, tiny_image_folder):
    from sae_audit.results import dataset_fingerprint

    spec = f"corrupt:jpeg:2:{tiny_image_folder}"
    before = dataset_fingerprint(open_image_set(spec))
    assert "file sizes" in before["content_hash_of"]
    victim = next(tiny_image_folder.rglob("*.png"))
    victim.write_bytes(victim.read_bytes() + b"\0")  # one base file changes size
    assert dataset_fingerprint(open_image_set(spec))["content_hash"] != before["content_hash"]


def audit_args(model, sae, ids, ood, out):
    return ["run", model, "--sae", sae, "--id", ids, *(a for o in ood for a in ("--ood", o)), "--out", out,
            "--device", "cpu", "-q"]


def test_audit_with_corrupted_ood_sets_end_to_end(corruptions, tiny_model_dir, tiny_sae_dir, tiny_image_folder,
                                                  tmp_path):
    out = tmp_path / "audit"
    ood = [f"corrupt:gaussian_noise:{s}:{tiny_image_folder}" for s in (1, 5)]
    result = corruptions.run(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood, out))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""  # -q: errors and --fail-on outcomes only
    results = json.loads((out / "results.json").read_text())
    names = [d["name"] for d in results["datasets"]][1:]
    assert names == ["corrupt:gaussian_noise:1:images", "corrupt:gaussian_noise:5:images"]
    assert [p["name"] for p in results["plugins"]] == ["builtin", "corruptions"]
    fvu = [results["saes"][0]["datasets"][n]["fvu"] for n in names]
    md = (out / "report.md").read_text()
    assert "## Corruption severity" in md and "Section not rendered" not in md
    assert f"{fvu[1]:.4f}" in md and "This section comes from plugin 'corruptions'" in md
    assert "Corruption severity" in (out / "report.html").read_text()


def test_the_installed_plugin_end_to_end(installed, tiny_model_dir, tiny_sae_dir, tiny_image_folder, tmp_path):
    out = tmp_path / "audit"
    ood = [f"corrupt:contrast:5:{tiny_image_folder}"]
    result = installed.run(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, ood, out))
    assert result.exit_code == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert {"name": "corruptions", "distribution": "sae-audit-corruptions", "version": "0.1.0"} in results["plugins"]


def test_a_plugin_that_adds_nothing_to_a_run_is_not_listed(corruptions, tiny_model_dir, tiny_sae_dir,
                                                           tiny_image_folder, tmp_path):
    from sae_audit.testing import make_image_folder

    ood = make_image_folder(tmp_path / "plain", n_per_class=2, classes=("a", "b"), seed=3)
    out = tmp_path / "audit"
    assert corruptions.run(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder, [ood], out)).exit_code == 0
    results = json.loads((out / "results.json").read_text())
    assert [p["name"] for p in results["plugins"]] == ["builtin"]
    assert "Corruption severity" not in (out / "report.md").read_text()


def test_corruption_grid_command(corruptions, tiny_image_folder, tmp_path):
    png = tmp_path / "grid.png"
    result = corruptions.run("corruption-grid", tiny_image_folder, "--kind", "jpeg", "--n", "2", "--size", "20",
                             "--out", png)
    assert result.exit_code == 0 and result.stderr.startswith(f"wrote {png}")
    assert Image.open(png).size == (120, 40)
    assert corruptions.run("corruption-grid", tiny_image_folder, "--n", "1", "--out", png, "-q").stderr == ""
    bad = corruptions.run("corruption-grid", tiny_image_folder, "--n", "0", "--out", png)
    assert bad.exit_code == 2 and bad.errors == ["sae-audit: error: --n and --size must be positive"]
