"""Every suite against a slow, dense or library reference; sharded == one pass; bad input."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from sae_audit import metrics
from sae_audit.errors import SaeAuditError
from sae_audit.sae import SAEConfig, SparseCodes, TopKSAE
from sae_audit.suites.bootstrap import Bootstrap, set_key
from sae_audit.plugin_manager import PluginError
from sae_audit.suites import PairContext, SuiteContext, SuiteInfo, available_suites, resolve_suites
from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.coverage import CoverageAccumulator, compare as coverage_compare
from sae_audit.suites.k_robustness import KRobustnessAccumulator, budgets_for
from sae_audit.suites.monosemanticity import MonosemanticityAccumulator
from sae_audit.suites.ood import OODAccumulator, compare as ood_compare
from sae_audit.suites.pictures import PicturesAccumulator, compare as pictures_compare
from sae_audit.suites.probing import ProbingAccumulator, held_out
from sae_audit.suites.purity import PurityAccumulator

D_IN, D_SAE, K, TOK, D_E = 8, 24, 4, 3, 5


def make_sae(seed=3, dead=False):
    sae = TopKSAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, k=K), seed=seed)
    with torch.no_grad():
        sae.b_enc.copy_(torch.full((D_SAE,), -1e6) if dead else torch.linspace(-1.5, 0.3, D_SAE))
    return sae


class Data:
    """``n`` images of ``TOK`` tokens each, with labels and judge embeddings, plus dense references."""

    def __init__(self, sae, n=60, seed=0, offset=0.0, n_classes=3):
        g = torch.Generator().manual_seed(seed)
        self.sae = sae
        self.labels_img = torch.arange(n) % n_classes
        centre = torch.randn(n_classes, D_IN, generator=g) * 1.5
        self.x = (centre[self.labels_img].repeat_interleave(TOK, 0) + torch.randn(n * TOK, D_IN, generator=g)
                  + offset)
        self.images = torch.arange(n) * 7 + 3  # dataset indices need not be 0..n-1
        self.image_index = self.images.repeat_interleave(TOK)
        self.emb = torch.randn(n, D_E, generator=g) + torch.nn.functional.one_hot(self.labels_img, D_E) * 2
        self.n = n

    def batches(self, parts=1, per_batch=8, bootstrap=None):
        """SuiteBatch es over whole images, grouped into ``parts`` shards (codes encoded once, for all batch sizes)."""
        codes_all = self.sae.encode(self.x)
        x_hat_all = self.sae.decode(codes_all)
        shards = []
        for img_ids in np.array_split(np.arange(self.n), parts):
            out = []
            for chunk in np.array_split(img_ids, max(1, math.ceil(len(img_ids) / per_batch))):
                rows = torch.tensor([i * TOK + t for i in chunk for t in range(TOK)], dtype=torch.long)
                x = self.x[rows]
                codes = SparseCodes(codes_all.indices[rows], codes_all.values[rows], codes_all.d_sae)
                imgs = self.images[chunk]
                out.append(SuiteBatch(x, codes, x_hat_all[rows], self.image_index[rows],
                                      self.labels_img[chunk].repeat_interleave(TOK), images=imgs,
                                      image_labels=self.labels_img[chunk], embeddings=self.emb[chunk],
                                      bootstrap=bootstrap))
            shards.append(out)
        return shards

    def dense_image_max(self):
        """``[n, d_sae]`` per-image max activation, by an explicit loop (the reference)."""
        z = self.sae.encode(self.x).to_dense().double()
        return torch.stack([z[i * TOK:(i + 1) * TOK].max(dim=0).values for i in range(self.n)])


def run(factory, data, parts=1, bootstrap=None, per_batch=8):
    accs = []
    for shard in data.batches(parts, per_batch=per_batch, bootstrap=bootstrap):
        acc = factory()
        for b in shard:
            acc.accumulate(b)
        accs.append(acc)
    for other in accs[1:]:
        accs[0].merge(other)
    return accs[0]


def close(a, b, path="") -> None:
    """Recursive equality with a 1e-9 relative tolerance on floats."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and b is not None:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


FACTORIES = {
    "monosemanticity": lambda sae: MonosemanticityAccumulator(D_SAE, D_E, "judge"),
    "purity": lambda sae: PurityAccumulator(D_SAE, n_top=6),
    "probing": lambda sae: ProbingAccumulator(D_SAE, K),
    "k-robustness": lambda sae: KRobustnessAccumulator(sae),
    "ood-detection": lambda sae: OODAccumulator(D_SAE, D_IN),
    "pictures": lambda sae: PicturesAccumulator(D_SAE, n_top=4),
}


@torch.no_grad()
@pytest.mark.parametrize("name", list(FACTORIES))
def test_three_shards_merged_equal_one_pass(name):
    sae = make_sae()
    data_id, data_ood = Data(sae, seed=1), Data(sae, n=45, seed=2, offset=1.0)
    whole = run(lambda: FACTORIES[name](sae), data_id, 1)
    sharded = run(lambda: FACTORIES[name](sae), data_id, 3)
    close(whole.finish(), sharded.finish())
    ood_whole = run(lambda: FACTORIES[name](sae), data_ood, 1)
    ood_sharded = run(lambda: FACTORIES[name](sae), data_ood, 3)
    info = available_suites()[name]
    if info.compare is not None:
        cov = {"top_shifted": [{"latent": j, "freq_id": 0.1, "freq_ood": 0.2, "log10_shift": 0.3} for j in range(4)]}
        ctx = PairContext(None, None, cov)
        close(info.compare(whole, ood_whole, ctx), info.compare(sharded, ood_sharded, ctx))


@torch.no_grad()
def test_monosemanticity_suite_matches_dense_metric_and_pairwise_sum():
    sae = make_sae()
    data = Data(sae, seed=4)
    got = run(lambda: MonosemanticityAccumulator(D_SAE, D_E), data, 3).finish()
    acts = data.dense_image_max()
    ref = metrics.monosemanticity_score(acts, data.emb).numpy()
    per = np.array([np.nan if v is None else v for v in got["per_latent"]])
    np.testing.assert_array_equal(np.isnan(per), np.isnan(ref))
    np.testing.assert_allclose(per[~np.isnan(ref)], ref[~np.isnan(ref)], atol=1e-4)  # per_latent is rounded
    alive = ref[~np.isnan(ref)]
    assert got["ms_mean"] == pytest.approx(alive.mean(), abs=1e-9)
    assert got["ms_median"] == pytest.approx(np.median(alive), abs=1e-9)
    assert got["ms_p90"] == pytest.approx(np.quantile(alive, 0.9), abs=1e-9)
    assert got["n_unscored"] == int(np.isnan(ref).sum())
    # An always-on latent exercises the min-max offset: the sums must still equal the dense metric.
    acc = MonosemanticityAccumulator(D_SAE, D_E)
    shifted = acts.clone()
    shifted[:, 0] += 2.0
    from sae_audit.sae import SparseCodes

    idx = torch.arange(D_SAE).repeat(data.n, 1)
    b = SuiteBatch(torch.zeros(data.n, D_IN), SparseCodes(idx, shifted.float(), D_SAE), torch.zeros(data.n, D_IN),
                   data.images, data.labels_img, images=data.images, embeddings=data.emb)
    acc.accumulate(b)
    want = metrics.monosemanticity_score(shifted.float().double(), data.emb)
    torch.testing.assert_close(acc.scores(), want, rtol=0, atol=1e-9, equal_nan=True)


@torch.no_grad()
def test_purity_matches_slow_reference():
    sae = make_sae()
    data = Data(sae, seed=5)
    n_top = 6
    got = run(lambda: PurityAccumulator(D_SAE, n_top), data, 2).finish()
    acts = data.dense_image_max().numpy()
    labels = data.labels_img.numpy()
    for j in range(D_SAE):
        fired = [(acts[i, j], int(data.images[i]), labels[i]) for i in range(data.n) if acts[i, j] > 0]
        fired.sort(key=lambda t: (-t[0], t[1]))
        top = [lab for _, _, lab in fired[:n_top]]
        want = max(top.count(c) for c in set(top)) / len(top) if top else None
        assert got["per_latent"][j] == (None if want is None else pytest.approx(want, abs=1e-4))


@torch.no_grad()
def test_probing_learns_separable_classes_and_uses_a_fixed_split():
    sae = make_sae()
    data = Data(sae, n=150, seed=6)
    got = run(lambda: ProbingAccumulator(D_SAE, K), data, 1).finish()
    assert got["budgets"] == [1, 2, 4]
    test = held_out(data.images.numpy())
    assert got["n_test"] == int(test.sum()) and got["n_train"] == int((~test).sum())
    assert 0.1 < test.mean() < 0.3
    assert got["accuracy"][-1] > got["chance"]  # the classes are separated in x, so in the codes
    # the split depends on the index only
    np.testing.assert_array_equal(held_out(np.array([3, 10, 17])), held_out(np.array([3, 10, 17])))


@torch.no_grad()
def test_k_robustness_matches_encoding_at_each_budget():
    sae = make_sae()
    data = Data(sae, seed=7)
    got = run(lambda: KRobustnessAccumulator(sae), data, 3).finish()
    assert got["budgets"] == budgets_for(K, D_SAE) == [1, 2, 4, 8, 16]
    for b, kp in enumerate(got["budgets"]):
        codes = sae.encode(data.x, k=kp)  # encoded directly at k', not truncated
        assert got["fvu"][b] == pytest.approx(metrics.fvu(data.x, sae.decode(codes)), rel=1e-6)
        assert got["l0_mean"][b] == pytest.approx(float(codes.l0().double().mean()), rel=1e-9)
        # MS at k' (the batches carry judge embeddings): per-image max of codes encoded at k', dense.
        z = codes.to_dense().double()
        per_image = torch.stack([z[i * TOK:(i + 1) * TOK].max(dim=0).values for i in range(data.n)])
        ms = metrics.monosemanticity_score(per_image, data.emb.double())
        assert got["ms_mean"][b] == pytest.approx(float(ms[torch.isfinite(ms)].mean()), rel=1e-6)


@torch.no_grad()
def test_ood_scores_and_auroc_match_brute_force_and_sklearn():
    """Scores by an explicit loop (rarity of an ID image from the OTHER ID images' tokens, re-encoded), AUROC by
    scikit-learn, each bootstrap replicate by scikit-learn with the Poisson weights as sample weights."""
    sae = make_sae()
    d_id, d_ood = Data(sae, seed=8), Data(sae, n=40, seed=9, offset=2.0)
    b_id, b_ood = Bootstrap(40, 0, set_key("id")), Bootstrap(40, 0, set_key("ood"))
    a_id = run(lambda: OODAccumulator(D_SAE, D_IN), d_id, 3, bootstrap=b_id)
    a_ood = run(lambda: OODAccumulator(D_SAE, D_IN), d_ood, 2, bootstrap=b_ood)
    pair = ood_compare(a_id, a_ood)

    x_ref = d_id.x.double()
    var = ((x_ref - x_ref.mean(0)) ** 2).sum().item() / len(x_ref)

    def rarity(z_img, others_x):
        f = (sae.encode(others_x).to_dense() > 0).double().mean(0)
        rar = -torch.log10(f + 1.0 / len(others_x))
        fired = (z_img > 0).nonzero()
        return rar[fired[:, 1]].mean().item() if len(fired) else float("nan")

    def brute(d, leave_one_out):
        out = {"fvu": [], "l0": [], "effective_units": [], "rarity": []}
        for i in range(d.n):
            xi = d.x[i * TOK:(i + 1) * TOK]
            c = sae.encode(xi)
            zi = c.to_dense()
            out["fvu"].append(((xi.double() - sae.decode(c).double()) ** 2).sum().item() / TOK / var)
            out["l0"].append((zi > 0).sum().item() / TOK)
            out["effective_units"].append(metrics.effective_units(zi.double()).mean().item())
            others = torch.cat([d_id.x[:i * TOK], d_id.x[(i + 1) * TOK:]]) if leave_one_out else d_id.x
            out["rarity"].append(rarity(zi, others))
        return out

    s_id, s_ood = brute(d_id, True), brute(d_ood, False)
    w_id, w_ood = b_id.weights(d_id.images), b_ood.weights(d_ood.images)
    for s in ("fvu", "l0", "effective_units", "rarity"):
        y = [0] * len(s_id[s]) + [1] * len(s_ood[s])
        ref = roc_auc_score(y, s_id[s] + s_ood[s])
        assert pair[f"auroc_{s}"] == pytest.approx(ref, abs=1e-6), s
        assert pair[f"{s}_ood_mean"] == pytest.approx(np.mean(s_ood[s]), rel=1e-6), s
        assert pair[f"{s}_id_mean"] == pytest.approx(np.mean(s_id[s]), rel=1e-6), s
        reps = [roc_auc_score(y, s_id[s] + s_ood[s], sample_weight=torch.cat([w_id[r], w_ood[r]]).numpy())
                for r in range(40)]
        assert pair["intervals"][f"auroc_{s}"] == pytest.approx(list(np.percentile(reps, [2.5, 97.5])), abs=1e-9), s
    assert pair["auroc_fvu"] > 0.7  # the offset set is reconstructed worse


@torch.no_grad()
def test_pictures_keep_the_true_top_images_and_make_pngs(tmp_path):
    from sae_audit.data import open_image_set
    from sae_audit.testing import make_image_folder

    sae = make_sae()
    data = Data(sae, n=12, seed=10)
    data.images = torch.arange(12)  # index into a real 12-image folder
    data.image_index = data.images.repeat_interleave(TOK)
    folder = open_image_set(str(make_image_folder(tmp_path / "imgs")))
    acc = run(lambda: PicturesAccumulator(D_SAE, n_top=3), data, 3)
    acts = data.dense_image_max().numpy()
    for j in range(D_SAE):
        order = sorted((i for i in range(12) if acts[i, j] > 0), key=lambda i: (-acts[i, j], i))[:3]
        assert [i for i, _ in acc.top(j)] == order
    cov = {"top_shifted": [{"latent": j, "freq_id": 0.1, "freq_ood": 0.0, "log10_shift": -1.0} for j in (20, 21)],
           "top_ood_only": []}
    out = pictures_compare(acc, acc, cov, folder, folder)
    assert [r["latent"] for r in out["latents"]] == [20, 21]
    pic = out["latents"][0]["id"][0]
    im = Image.open(io.BytesIO(base64.b64decode(pic["png"])))
    assert im.format == "PNG" and max(im.size) <= out["thumbnail_px"]


# --------------------------------------------------------------------------- bad input
def test_single_image_and_all_dead_sae_report_nan_with_reasons():
    sae = make_sae()
    one = Data(sae, n=1, seed=11)
    ms = run(lambda: MonosemanticityAccumulator(D_SAE, D_E), one).finish()
    assert ms["ms_mean"] is None and "two images" in ms["reason"]
    pr = run(lambda: ProbingAccumulator(D_SAE, K), one).finish()
    assert pr["accuracy"] == [None] * 3 and "two classes" in pr["reason"]

    dead = make_sae(dead=True)
    d = Data(dead, seed=12)
    assert "no latent" in run(lambda: MonosemanticityAccumulator(D_SAE, D_E), d).finish()["reason"]
    pu = run(lambda: PurityAccumulator(D_SAE), d).finish()
    assert pu["purity_mean"] is None and "no latent" in pu["reason"]
    a = run(lambda: OODAccumulator(D_SAE, D_IN), d)
    pair = ood_compare(a, a)
    assert pair["auroc_rarity"] is None and "rarity" in pair["reason"]
    assert pair["auroc_fvu"] == pytest.approx(0.5)
    assert run(lambda: KRobustnessAccumulator(dead), d).finish()["l0_mean"] == [0.0] * 5
    assert run(lambda: PicturesAccumulator(D_SAE), d).finish()["n_latents_with_images"] == 0


def test_judge_width_mismatch_and_nonfinite_embeddings():
    sae = make_sae()
    data = Data(sae, seed=13)
    acc = MonosemanticityAccumulator(D_SAE, D_E + 1)
    with pytest.raises(SaeAuditError, match="width"):
        acc.accumulate(data.batches()[0][0])
    with pytest.raises(SaeAuditError, match="judge"):
        MonosemanticityAccumulator(D_SAE, D_E).merge(MonosemanticityAccumulator(D_SAE, 7))
    data.emb[0] = float("nan")
    got = run(lambda: MonosemanticityAccumulator(D_SAE, D_E), data).finish()
    assert got["n_nonfinite_embeddings"] == 1 and got["n_images"] == data.n - 1


def test_registry(sae_audit_plugins):
    from sae_audit.hookspecs import hookimpl

    SUITES = available_suites()  # the built-ins only, in the sandbox
    assert {"monosemanticity", "purity", "probing", "k-robustness", "ood-detection", "pictures"} <= set(SUITES)
    assert [i.name for i in resolve_suites(["all"])] == list(SUITES)
    assert resolve_suites(["coverage"]) == []
    with pytest.raises(SaeAuditError, match="unknown suite"):
        resolve_suites(["nope"])

    class Twin:  # a second registration of a built-in name is a conflict naming both
        @hookimpl
        def sae_audit_register_suites(self, register):
            register("purity", lambda c: None, "a twin")

    sae_audit_plugins.register(Twin(), "twin")
    with pytest.raises(PluginError, match="registered twice"):
        resolve_suites(["purity"])
    sae_audit_plugins.manager.leave_out("twin", "register", "test over")

    class ExtraSuite:  # a plugin's suite joins the built-ins through the hook
        @hookimpl
        def sae_audit_register_suites(self, register):
            register("test-extra", lambda c: PicturesAccumulator(c.sae.d_sae), "a test suite", needs_labels=True)

    sae_audit_plugins.register(ExtraSuite(), "extra")
    [info] = resolve_suites(["test-extra"])
    assert info.name == "test-extra" and info.needs_labels and info.compare is None
    assert [i.name for i in resolve_suites(["all"])] == [*SUITES, "test-extra"]
    acc = info.factory(SuiteContext(make_sae()))
    assert acc.finish()["n_top"] == 5
