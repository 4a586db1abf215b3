"""sae-audit-concentration: the suite against a slow reference, the bootstrap's independence from
batching, exact merges, the noise floor, rotations, and the plugin end to end through the real
command line in process (registered in a sandbox, and as installed).

Run after `pip install ./plugins/sae-audit-concentration`; the fixtures (tiny model, SAE and image
folder, ``sae_audit_plugins``, ``installed``) come from sae-audit's pytest plugin (``sae_audit.testing``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import sae_audit_concentration.plugin
from sae_audit.data import open_image_set
from sae_audit.errors import SaeAuditError
from sae_audit.sae import SparseCodes, load_sae
from sae_audit.suites import SuiteBatch
from sae_audit.testing import make_image_folder
from sae_audit_concentration import ConcentrationAccumulator, RotatedSet, compare, poisson_weights

TOKENS = 6  # tokens per image in the synthetic batches


@pytest.fixture()
def concentration(sae_audit_plugins):
    """The plugin registered in a sandbox: these tests do not depend on what else is installed."""
    sae_audit_plugins.register(sae_audit_concentration.plugin, "concentration")
    return sae_audit_plugins


@pytest.fixture(scope="module")
def sae(tiny_sae_dir):
    return load_sae(tiny_sae_dir)


def image_activations(sae, image: int, shift: float = 0.0) -> torch.Tensor:
    """The ``[TOKENS, d_in]`` activations of one image: a function of the image index alone."""
    g = torch.Generator().manual_seed(1000 + image)
    return torch.randn(TOKENS, sae.d_in, generator=g) + shift


def batch(sae, images, shift: float = 0.0) -> SuiteBatch:
    x = torch.cat([image_activations(sae, i, shift) for i in images])
    with torch.no_grad():
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
    idx = torch.tensor(images).repeat_interleave(TOKENS)
    return SuiteBatch(x, codes, x_hat, idx, torch.full_like(idx, -1), images=torch.tensor(images),
                      image_labels=torch.full((len(images),), -1))


def streamed(sae, batches, seed: int = 0) -> ConcentrationAccumulator:
    acc = ConcentrationAccumulator(sae.d_sae, seed=seed)
    for b in batches:
        acc.accumulate(b)
    return acc


# --------------------------------------------------------------------------- the numbers
def test_entropy_and_top_share_match_a_slow_reference(sae):
    images = list(range(40))
    out = streamed(sae, [batch(sae, images[:25]), batch(sae, images[25:])]).finish()
    counts = np.zeros(sae.d_sae)  # the slow way: a dense code matrix, one token at a time
    with torch.no_grad():
        for i in images:
            for z in sae.encode(image_activations(sae, i)).to_dense():
                for j in range(sae.d_sae):
                    counts[j] += z[j].item() > 0
    assert out["n_firings"] == counts.sum() and out["n_tokens"] == 40 * TOKENS and out["n_images"] == 40
    assert out["entropy_bits"] == pytest.approx(stats.entropy(counts, base=2), rel=1e-12)
    assert out["effective_latents"] == pytest.approx(2 ** stats.entropy(counts, base=2), rel=1e-12)
    top = math.ceil(sae.d_sae / 100)
    assert out["top1pct_share"] == pytest.approx(sum(sorted(counts)[-top:]) / counts.sum())
    assert out["curve"][-1] == pytest.approx(1.0) and out["curve"] == sorted(out["curve"])
    assert out["entropy_bits_ci"][0] < out["entropy_bits_ci"][1]
    json.dumps(out, allow_nan=False)  # JSON-ready, as the suite contract asks


def test_the_entropy_interval_covers_the_true_entropy():
    """Tokens drawn from a known firing distribution (Zipf over 64 latents, one latent per token): the 95%
    interval must cover its true entropy in about 95% of trials. The plug-in entropy is biased low, so the
    percentile interval of the replicates would not (checked too: it is why the suite uses the basic one)."""
    from sae_audit_concentration.suite import _rows

    d, n_images = 64, 100
    p = 1 / np.arange(1, d + 1)
    p /= p.sum()
    truth = float(-(p * np.log2(p)).sum())
    rng = np.random.default_rng(0)
    trials, basic, percentile = 80, 0, 0
    for t in range(trials):
        latents = torch.from_numpy(rng.choice(d, size=(n_images * TOKENS, 1), p=p))
        idx = torch.arange(n_images).repeat_interleave(TOKENS)
        x = torch.zeros(len(idx), 2)
        acc = ConcentrationAccumulator(d, seed=t)
        acc.accumulate(SuiteBatch(x, SparseCodes(latents, torch.ones(len(idx), 1), d), x, idx, idx * 0 - 1,
                                  images=torch.arange(n_images), image_labels=torch.full((n_images,), -1)))
        lo, hi = acc.finish()["entropy_bits_ci"]
        basic += lo <= truth <= hi
        q = np.percentile(_rows(acc.boot.sum(0), "entropy_bits"), [2.5, 97.5])
        percentile += q[0] <= truth <= q[1]
    assert basic / trials >= 0.82 and percentile / trials < 0.7, (basic / trials, percentile / trials)


def test_batching_and_merging_change_nothing(sae):
    images = list(range(30))
    one = streamed(sae, [batch(sae, images)]).finish()
    many = streamed(sae, [batch(sae, images[i:i + 7]) for i in range(0, 30, 7)]).finish()
    a, b = streamed(sae, [batch(sae, images[10:])]), streamed(sae, [batch(sae, images[:10])])
    a.merge(b)
    assert one == many == a.finish()  # intervals included: the weights depend on the image, not the batch
    assert a.finish() == a.finish()  # finish does not change the accumulator


def test_poisson_weights_are_poisson_1_and_a_function_of_the_image():
    w = poisson_weights(7, np.arange(2000), 200)
    assert w.shape == (2000, 200) and w.dtype == np.int64
    assert abs(w.mean() - 1) < 0.01 and abs(w.var() - 1) < 0.02
    assert abs((w == 0).mean() - math.exp(-1)) < 0.005
    assert np.array_equal(poisson_weights(7, np.array([5, 3]), 200), w[[5, 3]])
    assert not np.array_equal(poisson_weights(8, np.array([5]), 200), w[[5]])


def test_a_pair_is_shifted_only_beyond_the_noise_floor(sae):
    ids = streamed(sae, [batch(sae, list(range(60)))])
    same = streamed(sae, [batch(sae, list(range(60, 120)))])  # another sample of the same distribution
    pair = compare(ids, same)
    assert pair["entropy_drop_shifted"] is False and pair["top1pct_share_gap_shifted"] is False
    lo, hi = pair["entropy_drop_floor_ci"]
    assert lo < 0 < hi  # two halves of one set: no drop but sampling noise
    # OOD whose every token fires the same k latents: its firings crowd onto k latents.
    crowded = ConcentrationAccumulator(sae.d_sae)
    idx = torch.arange(60).repeat_interleave(TOKENS)
    k = sae.k
    codes = SparseCodes(torch.arange(k).repeat(len(idx), 1), torch.ones(len(idx), k), sae.d_sae)
    x = torch.zeros(len(idx), sae.d_in)
    crowded.accumulate(SuiteBatch(x, codes, x, idx, torch.full_like(idx, -1), images=torch.arange(60),
                                  image_labels=torch.full((60,), -1)))
    assert crowded.finish()["entropy_bits"] == pytest.approx(math.log2(k))
    shifted = compare(ids, crowded)
    assert shifted["entropy_drop"] == pytest.approx(ids.finish()["entropy_bits"] - math.log2(k))
    assert shifted["entropy_drop_shifted"] is True and shifted["top1pct_share_gap_shifted"] is True


def test_selected_but_silent_latents_do_not_fire(sae):
    idx = torch.zeros(2, dtype=torch.long)
    codes = SparseCodes(torch.tensor([[0, 1], [0, 2]]), torch.tensor([[1.0, 0.0], [2.0, 0.0]]), sae.d_sae)
    acc = ConcentrationAccumulator(sae.d_sae)
    acc.accumulate(SuiteBatch(torch.zeros(2, sae.d_in), codes, torch.zeros(2, sae.d_in), idx, idx - 1,
                              images=torch.tensor([0]), image_labels=torch.tensor([-1])))
    out = acc.finish()
    assert out["n_firings"] == 2 and out["entropy_bits"] == 0.0 and out["top1pct_share"] == 1.0


# --------------------------------------------------------------------------- rotated sets
def test_right_angles_are_exact_rotations(concentration, tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    (tmp_path / "imgs" / "c").mkdir(parents=True)
    Image.fromarray(a).save(tmp_path / "imgs" / "c" / "x.png")
    base = open_image_set(tmp_path / "imgs")
    for deg, k in ((90, 1), (180, 2), (270, 3), (-90, 3), (360, 0)):
        s = open_image_set(f"rotate:{deg}:{tmp_path / 'imgs'}")
        assert np.array_equal(np.asarray(s.load(0)), np.rot90(a, k))  # counter-clockwise, as numpy's
        assert s.name == f"rotate:{deg}:imgs" and s.registered_by == "concentration"
        assert s.base.name == base.name and s.item_file(0) == base.item_file(0) and s.label(0) == base.label(0)
    tilted = np.asarray(open_image_set(f"rotate:45:{tmp_path / 'imgs'}").load(0))
    assert tilted.shape == a.shape and tilted[0, 0].tolist() == [0, 0, 0]  # same size, black corners


@pytest.mark.parametrize("spec, why", [("rotate:x:digits", "whole number of degrees"),
                                       ("rotate:720:digits", "from -360 to 360"), ("rotate:90", "rotate:DEG:SET")])
def test_bad_rotation_specs_say_what_is_wrong(concentration, spec, why):
    with pytest.raises(SaeAuditError, match=why):
        open_image_set(spec)


def test_a_rotated_set_rejects_a_non_integer_angle(tiny_image_folder):
    with pytest.raises(SaeAuditError, match="whole number"):
        RotatedSet(open_image_set(tiny_image_folder), 12.5)


# --------------------------------------------------------------------------- end to end
def audit_args(model, sae_dir, ids, ood, out, *extra):
    return ("run", model, "--sae", sae_dir, "--id", ids, "--ood", ood, "--out", out, "--device", "cpu", "-q",
            "--suite", "concentration", *extra)


def test_audit_end_to_end_in_a_sandbox(concentration, tiny_model_dir, tiny_sae_dir, tiny_image_folder, tmp_path):
    more = make_image_folder(tmp_path / "more", n_per_class=8, seed=9)  # enough images for intervals
    out = tmp_path / "audit"
    result = concentration.run(*audit_args(tiny_model_dir, tiny_sae_dir, more, f"rotate:90:{more}", out,
                                           "--fail-on", "entropy_drop>100"))
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    results = json.loads((out / "results.json").read_text())
    assert [d["name"] for d in results["datasets"]] == ["more", "rotate:90:more"]
    assert [p["name"] for p in results["plugins"]] == ["builtin", "concentration"]
    assert results["metrics"]["entropy_drop"]["suite"] == "concentration"
    suite = results["saes"][0]["suites"]["concentration"]
    assert suite["datasets"]["more"]["n_images"] == 24 and suite["pairs"][0]["ood"] == "rotate:90:more"
    drop = suite["pairs"][0]["entropy_drop"]
    h = {n: d["entropy_bits"] for n, d in suite["datasets"].items()}
    assert drop == pytest.approx(h["more"] - h["rotate:90:more"])
    md = (out / "report.md").read_text()
    assert "## Firing concentration" in md and "This section comes from plugin 'concentration'" in md
    assert "firing-entropy drop, ID − OOD (bits) (lower is better; suite concentration of plugin concentration)" in md
    assert list((out / "figures").glob("plugin-concentration-firing-concentration-curve-0*.png"))
    assert 'id="plugin-concentration-firing-concentration"' in (out / "report.html").read_text()

    gated = concentration.run(*audit_args(tiny_model_dir, tiny_sae_dir, more, f"rotate:90:{more}",
                                          tmp_path / "gated", "--fail-on", f"entropy_drop<={drop}"))
    assert gated.exit_code == 1 and gated.stderr.startswith("sae-audit: --fail-on entropy_drop<=")
    diff = concentration.run("report", "diff", out / "results.json", tmp_path / "gated" / "results.json")
    assert diff.exit_code == 0 and "firing-entropy drop, ID − OOD (bits) (suite concentration)" in diff.stdout


def test_the_installed_plugin_end_to_end(installed, tiny_model_dir, tiny_sae_dir, tiny_image_folder, tmp_path):
    p = installed.plugin("concentration")
    assert p is not None, "install the plugin first: pip install ./plugins/sae-audit-concentration"
    assert (p.distribution, p.version) == ("sae-audit-concentration", "0.1.0")
    assert p.hooks == ["sae_audit_register_image_sets", "sae_audit_register_report_sections",
                       "sae_audit_register_suites"]
    listed = installed.run("suites")
    assert "[metrics: firing_entropy, top1pct_share, entropy_drop, top1pct_share_gap] [plugin concentration]" \
        in listed.stdout
    out = tmp_path / "audit"
    result = installed.run(*audit_args(tiny_model_dir, tiny_sae_dir, tiny_image_folder,
                                       f"rotate:180:{tiny_image_folder}", out))
    assert result.exit_code == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert {"name": "concentration", "distribution": "sae-audit-concentration", "version": "0.1.0"} \
        in results["plugins"]
