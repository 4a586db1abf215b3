"""The streaming Poisson bootstrap (SPEC section 5): weights, batch/shard invariance, each replicate against an
explicitly resampled data set, and the rarity score without leakage on two halves of one distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare, poisson, spearmanr

from sae_audit import metrics
from sae_audit.models.splice import ModelOutput, SpliceOutputs
from sae_audit.sae import SAEConfig, SparseCodes, TopKSAE
from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.bootstrap import Bootstrap, id_halves, set_key
from sae_audit.suites.coverage import CoverageAccumulator, compare_replicates
from sae_audit.suites.fidelity import FidelityAccumulator
from sae_audit.suites.monosemanticity import MS_GROUPS, MonosemanticityAccumulator, group_weights, image_groups
from sae_audit.suites.ood import OODAccumulator, compare as ood_compare
from sae_audit.suites.probing import ProbingAccumulator
from sae_audit.suites.purity import PurityAccumulator

D_IN, D_SAE, K, TOK, D_E, R = 8, 24, 4, 3, 5, 30


def make_sae(seed=3):
    sae = TopKSAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, k=K), seed=seed)
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-1.5, 0.3, D_SAE))
    return sae


class Images:
    """``n`` images of ``TOK`` tokens (codes encoded once), labels, judge embeddings and model outputs."""

    def __init__(self, sae, n=64, seed=0, offset=0.0, name="set"):
        g = torch.Generator().manual_seed(seed)
        self.n, self.sae = n, sae
        self.labels = torch.arange(n) % 3
        centre = torch.randn(3, D_IN, generator=g) * 1.5
        self.x = centre[self.labels].repeat_interleave(TOK, 0) + torch.randn(n * TOK, D_IN, generator=g) + offset
        self.codes = sae.encode(self.x)
        self.x_hat = sae.decode(self.codes)
        self.ids = torch.arange(n) * 5 + 2
        self.emb = torch.randn(n, D_E, generator=g) + torch.nn.functional.one_hot(self.labels, D_E) * 2
        y = torch.randn(n, 6, generator=g)
        self.out = SpliceOutputs(ModelOutput(y, y * 2), ModelOutput(y + 0.3 * torch.randn(n, 6, generator=g), y * 1.5),
                                 ModelOutput(y + torch.randn(n, 6, generator=g), -y), torch.ones(n, dtype=torch.bool))
        self.bootstrap = Bootstrap(R, 7, set_key(name))

    def batch(self, rows_img) -> SuiteBatch:
        rows_img = torch.as_tensor(rows_img)
        rows = (rows_img[:, None] * TOK + torch.arange(TOK)).flatten()
        codes = SparseCodes(self.codes.indices[rows], self.codes.values[rows], D_SAE)
        return SuiteBatch(self.x[rows], codes, self.x_hat[rows], self.ids[rows_img].repeat_interleave(TOK),
                          self.labels[rows_img].repeat_interleave(TOK), images=self.ids[rows_img],
                          image_labels=self.labels[rows_img], embeddings=self.emb[rows_img],
                          bootstrap=self.bootstrap, outputs=self.out.subset(rows_img))

    def run(self, factory, batch_size=8, shards=1, order=None):
        order = np.arange(self.n) if order is None else order
        accs = []
        for shard in np.array_split(order, shards):
            acc = factory()
            for start in range(0, len(shard), batch_size):
                acc.accumulate(self.batch(shard[start:start + batch_size]))
            accs.append(acc)
        for other in accs[1:]:
            accs[0].merge(other)
        return accs[0]

    def resampled(self, w: torch.Tensor) -> torch.Tensor:
        """Image rows of the resampled set: image ``n`` repeated ``w[n]`` times."""
        return torch.repeat_interleave(torch.arange(self.n), w.long())


# --------------------------------------------------------------------------- the weights
def test_weights_are_poisson_1_and_a_function_of_the_image_only():
    b = Bootstrap(200, 0, set_key("fashion"))
    w = b.weights(torch.arange(3000))
    counts = np.bincount(w.flatten().long().numpy(), minlength=7)[:7].astype(float)
    expected = poisson.pmf(np.arange(7), 1.0) * w.numel()
    expected[-1] += w.numel() - expected.sum()
    counts[-1] += w.numel() - counts.sum()
    assert chisquare(counts, expected).pvalue > 1e-3
    # replicates and images are not correlated (no shared stream)
    c = np.corrcoef(w[:, :50].T.numpy())
    assert np.abs(c[~np.eye(50, dtype=bool)]).max() < 0.35
    # the same image gets the same weights whatever else is in the call, in any order
    ids = torch.tensor([5, 900, 17])
    torch.testing.assert_close(b.weights(ids), w[:, ids])
    torch.testing.assert_close(b.weights(ids.flip(0)), w[:, ids.flip(0)])
    # another image set, another seed: other weights
    assert not torch.equal(Bootstrap(200, 0, set_key("digits")).weights(ids), w[:, ids])
    assert not torch.equal(Bootstrap(200, 1, set_key("fashion")).weights(ids), w[:, ids])


def test_id_halves_are_disjoint_balanced_and_seeded():
    a = id_halves(101, seed=3)
    assert a.sum() == 50 and (~a).sum() == 51
    assert torch.equal(a, id_halves(101, seed=3)) and not torch.equal(a, id_halves(101, seed=4))
    assert 0.3 < a[:50].double().mean() < 0.7  # not the first half of the indices


# --------------------------------------------------------------------------- invariance (issue 11, requirement 1)
FACTORIES = {
    "coverage": lambda: CoverageAccumulator(D_SAE, D_IN, K),
    "ood-detection": lambda: OODAccumulator(D_SAE, D_IN),
    "monosemanticity": lambda: MonosemanticityAccumulator(D_SAE, D_E),
    "purity": lambda: PurityAccumulator(D_SAE, n_top=4),
    "probing": lambda: ProbingAccumulator(D_SAE, K),
    "fidelity": lambda: FidelityAccumulator(),
}


def close(a, b, path="", rel=1e-9):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            close(a[k], b[k], f"{path}.{k}", rel)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]", rel)
    elif isinstance(a, float) and b is not None:
        assert a == pytest.approx(b, rel=rel, abs=1e-12), path
    else:
        assert a == b, path


@torch.no_grad()
@pytest.mark.parametrize("name", list(FACTORIES))
def test_intervals_do_not_depend_on_batch_size_shards_or_order(name):
    data = Images(make_sae(), n=70, seed=1)
    one = data.run(FACTORIES[name], batch_size=64).finish()
    assert "intervals" in one or name == "ood-detection"  # its intervals are the pairs' AUROCs (next test)
    # Equal up to the rounding of sums taken in another order (MS keeps its group sums in float32).
    rel = 1e-6 if name == "monosemanticity" else 1e-9
    for batch_size in (1, 7):
        close(data.run(FACTORIES[name], batch_size=batch_size).finish(), one, f"batch {batch_size}", rel)
    shuffled = np.random.default_rng(0).permutation(data.n)
    close(data.run(FACTORIES[name], batch_size=7, shards=3, order=shuffled).finish(), one, "3 shards", rel)


@torch.no_grad()
def test_pair_intervals_do_not_depend_on_batching_either():
    sae = make_sae()
    a, b = Images(sae, n=50, seed=2, name="id"), Images(sae, n=40, seed=3, offset=1.0, name="ood")
    from sae_audit.suites.coverage import compare
    from sae_audit.suites.fidelity import compare as fid_compare

    for fac, cmp in ((FACTORIES["coverage"], compare), (FACTORIES["ood-detection"], ood_compare),
                     (FACTORIES["fidelity"], fid_compare)):
        one = cmp(a.run(fac, 64), b.run(fac, 64))
        other = cmp(a.run(fac, 1, shards=3), b.run(fac, 7, shards=2))
        assert "intervals" in one
        close(one, other)


def test_replicate_memory_does_not_grow_with_the_number_of_images():
    sae = make_sae()
    sizes = []
    for n in (30, 300):
        acc = Images(sae, n=n).run(FACTORIES["coverage"], batch_size=32)
        sizes.append(sum(t.numel() for t in (acc.rep["n"], acc.rep["fire"], acc.rep["sums"], acc.rep["moments"].mean)))
    assert sizes[0] == sizes[1] == R * (1 + D_SAE + 5 + D_IN)


# --------------------------------------------------------------------------- each replicate = the resampled data set
@torch.no_grad()
def test_coverage_replicates_equal_the_metrics_of_the_resampled_sets():
    sae = make_sae()
    a, b = Images(sae, n=40, seed=4, name="id"), Images(sae, n=30, seed=5, offset=0.7, name="ood")
    acc_a, acc_b = a.run(FACTORIES["coverage"], 9), b.run(FACTORIES["coverage"], 9)
    reps_a, pair = acc_a.replicate_metrics(), compare_replicates(acc_a, acc_b)
    w_a, w_b = a.bootstrap.weights(a.ids), b.bootstrap.weights(b.ids)
    for r in range(0, R, 7):
        def dense(data, w):
            img = data.resampled(w[r])
            rows = (img[:, None] * TOK + torch.arange(TOK)).flatten()
            x, x_hat = data.x[rows].double(), data.x_hat[rows].double()
            z = SparseCodes(data.codes.indices[rows], data.codes.values[rows], D_SAE).to_dense().double()
            return x, x_hat, z

        x, x_hat, z = dense(a, w_a)
        f = (z > 0).double().mean(0)
        assert float(reps_a["fvu"][r]) == pytest.approx(metrics.fvu(x, x_hat), rel=1e-9)
        assert float(reps_a["alive_fraction"][r]) == pytest.approx(float((f > 0).double().mean()))
        assert float(reps_a["dense_fraction"][r]) == pytest.approx(float((f > 0.1).double().mean()))
        assert float(reps_a["cosine"][r]) == pytest.approx(float(metrics.cosine(x, x_hat).mean()), rel=1e-9)
        assert float(reps_a["l0_mean"][r]) == pytest.approx(float((z > 0).sum(1).double().mean()), rel=1e-9)
        assert float(reps_a["effective_units_mean"][r]) == pytest.approx(
            float(metrics.effective_units(z).mean()), rel=1e-9)
        xb, xb_hat, zb = dense(b, w_b)
        fa, fb = f.numpy(), (zb > 0).double().mean(0).numpy()
        assert float(pair["js_divergence"][r]) == pytest.approx(jensenshannon(fa, fb, base=2) ** 2, rel=1e-9)
        assert float(pair["spearman"][r]) == pytest.approx(spearmanr(fa, fb).statistic, rel=1e-9)
        assert float(pair["shared_alive"][r]) == pytest.approx(((fa > 0) & (fb > 0)).sum() / (fa > 0).sum())
        assert float(pair["n_ood_only"][r]) == ((fb > 0) & (fa == 0)).sum()
        assert float(pair["fvu_gap"][r]) == pytest.approx(metrics.fvu(xb, xb_hat) - metrics.fvu(x, x_hat), rel=1e-9)
    got = acc_a.finish()["intervals"]["fvu"]
    assert got == pytest.approx(list(np.percentile(reps_a["fvu"].numpy(), [2.5, 97.5])))


@torch.no_grad()
def test_ms_replicates_weigh_each_image_by_its_groups_weight():
    data = Images(make_sae(), n=60, seed=6)
    acc = data.run(FACTORIES["monosemanticity"], 11)
    reps = acc.replicate_scores()
    wg = group_weights(data.bootstrap)
    groups = image_groups(data.bootstrap, data.ids)
    per_image = torch.stack([SparseCodes(data.codes.indices[i * TOK:(i + 1) * TOK], data.codes.values[i * TOK:(i + 1) * TOK],
                                         D_SAE).to_dense().max(dim=0).values for i in range(data.n)]).double()
    every = (per_image > 0).all(dim=0)  # such latents keep the full data's min-max offset in replicates
    for r in range(0, R, 6):
        img = data.resampled(wg[r][groups])
        ref = metrics.monosemanticity_score(per_image[img], data.emb[img].double())
        keep = ~every
        torch.testing.assert_close(reps[r][keep], ref[keep], rtol=1e-4, atol=1e-5, equal_nan=True)
    assert 1 < MS_GROUPS <= 64


@torch.no_grad()
def test_purity_replicates_are_the_top_n_of_the_resampled_set():
    data = Images(make_sae(), n=60, seed=7)
    n_top = 4
    acc = data.run(lambda: PurityAccumulator(D_SAE, n_top=n_top), 13)
    reps = acc.replicate_purities()
    w = data.bootstrap.weights(data.ids)
    per_image = torch.stack([SparseCodes(data.codes.indices[i * TOK:(i + 1) * TOK], data.codes.values[i * TOK:(i + 1) * TOK],
                                         D_SAE).to_dense().max(dim=0).values for i in range(data.n)])
    for r in range(0, R, 5):
        for j in range(D_SAE):
            copies = [(float(per_image[i, j]), int(data.ids[i]), int(data.labels[i]))
                      for i in range(data.n) if per_image[i, j] > 0 for _ in range(int(w[r, i]))]
            copies.sort(key=lambda t: (-t[0], t[1]))
            top = [lab for _, _, lab in copies[:n_top]]
            want = max(top.count(c) for c in set(top)) / len(top) if top else float("nan")
            got = float(reps[r, j])
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want), (r, j)


@torch.no_grad()
def test_probe_and_fidelity_replicates_resample_their_images():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler
    from scipy.sparse import csr_matrix

    from sae_audit.suites.probing import C_GRID, held_out

    data = Images(make_sae(), n=120, seed=8)
    got = data.run(lambda: ProbingAccumulator(D_SAE, K, budgets=(K,)), 16).finish()
    per_image = torch.stack([SparseCodes(data.codes.indices[i * TOK:(i + 1) * TOK], data.codes.values[i * TOK:(i + 1) * TOK],
                                         D_SAE).to_dense().max(dim=0).values for i in range(data.n)])
    top = per_image.topk(K, dim=1)
    per_image = torch.zeros_like(per_image).scatter_(1, top.indices, top.values).numpy()  # each image's top-k
    test = held_out(data.ids.numpy())
    labels = data.labels.numpy()
    x = csr_matrix(per_image.astype(np.float64))

    def probe(c, fit_on):
        return make_pipeline(MaxAbsScaler(), LogisticRegression(C=c, max_iter=1000, random_state=0)).fit(
            x[fit_on], labels[fit_on])

    # The regularisation is chosen on the validation fold, by brute force over the grid (first best wins).
    fold = np.array([_splitmix_fold(int(i)) for i in data.ids])
    assert np.array_equal(fold == 0, test)
    val, inner = fold == 1, fold >= 2
    best = max(C_GRID, key=lambda c: ((probe(c, inner).predict(x[val]) == labels[val]).mean(), -c))
    assert got["C"] == [best]
    hit = probe(best, ~test).predict(x[test]) == labels[test]
    w = data.bootstrap.weights(data.ids[torch.from_numpy(test)]).numpy()
    reps = (w * hit).sum(1) / w.sum(1)
    assert got["accuracy"][0] == pytest.approx(hit.mean())
    assert got["intervals"]["accuracy"][0] == pytest.approx(list(np.percentile(reps, [2.5, 97.5])))

    acc = data.run(FACTORIES["fidelity"], 16)
    reps = acc.replicate_metrics()
    wf = data.bootstrap.weights(data.ids)
    for r in range(0, R, 7):
        img = data.resampled(wf[r])
        d_s = 1 - metrics.cosine(data.out.base.pooled[img], data.out.sae.pooled[img])
        d_a = 1 - metrics.cosine(data.out.base.pooled[img], data.out.ablation.pooled[img])
        assert float(reps["fidelity"][r]) == pytest.approx(float(1 - d_s.mean() / d_a.mean()), rel=1e-9)
        kl = metrics.kl_softmax(data.out.base.logits[img], data.out.sae.logits[img]).mean()
        assert float(reps["kl"][r]) == pytest.approx(float(kl), rel=1e-9)


def _splitmix_fold(index: int, folds: int = 5) -> int:
    """splitmix64's finaliser in plain Python integers (mod 2**64), the independent reference of the probe split."""
    m = (1 << 64) - 1
    z = (index + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return (z ^ (z >> 31)) % folds


# --------------------------------------------------------------------------- rarity without leakage (requirement 4)
def _rare_codes(n: int, seed: int, d_sae=3000, k=16, tokens=4, name="x"):
    """``n`` images whose tokens fire ``k`` of ``d_sae`` latents drawn from a Zipf profile: many rare latents."""
    g = torch.Generator().manual_seed(seed)
    p = (1.0 / torch.arange(1, d_sae + 1).double() ** 1.1).float()
    idx = torch.multinomial(p.expand(n * tokens, -1), k, replacement=False, generator=g)
    vals = torch.rand(n * tokens, k, generator=g) + 0.1
    x = torch.randn(n * tokens, 4, generator=g)
    acc = OODAccumulator(d_sae, 4)
    boot = Bootstrap(200, 0, set_key(name))
    for s in range(0, n, 64):
        img = torch.arange(s, min(n, s + 64))
        rows = (img[:, None] * tokens + torch.arange(tokens)).flatten()
        acc.accumulate(SuiteBatch(x[rows], SparseCodes(idx[rows], vals[rows], d_sae), 0.9 * x[rows],
                                  img.repeat_interleave(tokens), torch.full((len(rows),), -1), images=img,
                                  bootstrap=boot))
    return acc


@torch.no_grad()
def test_rarity_on_two_halves_of_one_distribution_is_chance_and_in_sample_was_not():
    """The issue's failure: scoring ID images against frequencies that include their own firings gives AUROCs of
    0.55-0.6 between two halves of ONE distribution. Leave-one-out scores sit at 0.5 and every AUROC's 95%
    interval covers 0.5 about 95% of the time."""
    leave_one_out, in_sample, covered, total = [], [], 0, 0
    for rep in range(12):
        a, b = _rare_codes(400, 2 * rep, name="a"), _rare_codes(400, 2 * rep + 1, name="b")
        pair = ood_compare(a, b)
        leave_one_out.append(pair["auroc_rarity"])
        old_id = a.image_scores(_Reference(a))["rarity"]  # the reference object is not `a`: in-sample frequencies
        in_sample.append(metrics.auroc(old_id, b.image_scores(a)["rarity"]))
        for key, (lo, hi) in pair["intervals"].items():
            covered += lo <= 0.5 <= hi
            total += 1
    assert np.mean(in_sample) > 0.55  # the bias this test exists to catch
    assert abs(np.mean(leave_one_out) - 0.5) < 0.02
    assert covered / total >= 0.85  # nominal 0.95; 48 intervals


class _Reference:
    """The same counts as an accumulator, seen as another object (so ``image_scores`` does not leave one out)."""

    def __init__(self, acc):
        self.n_tokens, self.moments, self.fire_counts = acc.n_tokens, acc.moments, acc.fire_counts
