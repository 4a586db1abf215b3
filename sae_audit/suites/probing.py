"""Small-budget linear probing (SPEC section 4; the claim of arXiv 2606.27321 it tests).

Each image is represented by its per-image code (each latent's maximum over the
image's tokens) restricted to its ``m`` largest entries, for ``m`` in
``{1, 2, 4, 8, k}``. A multinomial logistic regression (scikit-learn
``LogisticRegression``, lbfgs, after ``MaxAbsScaler``) is fitted on a fixed
train split and scored on the rest. The split is a function of the image's
dataset index alone (:func:`fold`: fold 0 is held out for the test, 20 %), so
it does not depend on batching or sharding. The regularisation is chosen per
budget on a validation split of the train images (fold 1): for each ``C`` of
:data:`C_GRID` a probe is fitted on folds 2-4 and scored on fold 1; the ``C``
with the best validation accuracy (ties: the smaller ``C``, the stronger
regularisation) is refitted on folds 1-4 and scored on fold 0. When fold 1 or
folds 2-4 cannot support that (fewer than two classes, no image), ``C = 1``
(scikit-learn's default) and ``C_chosen_on`` says so.

Memory: ``k`` (latent, value) pairs per image, i.e. no more than one token's
sparse code per image.

Intervals (SPEC section 5): the fitted probes are fixed and the held-out
images are resampled, each held-out image counted ``w_nr`` times in replicate
``r`` (its Poisson bootstrap weight): the interval says how much the accuracy
measured on this many held-out images moves by chance; it leaves out the
variation of the fit itself (refitting 200 times per budget would cost 200
fits). The majority-class chance level gets its interval the same way.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.common import check_same_bootstrap, interval_dict


#: The inverse regularisation strengths (scikit-learn's ``C``) tried on the validation split.
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def fold(images: np.ndarray, folds: int = 5) -> np.ndarray:
    """``[n]`` int64 fold of each image index: ``splitmix64(index) % folds``."""
    z = images.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(folds)).astype(np.int64)


def held_out(images: np.ndarray, folds: int = 5) -> np.ndarray:
    """Boolean mask of the test split (fold 0 of :func:`fold`)."""
    return fold(images, folds) == 0


def _fit(x, y, c: float, seed: int):
    """A fitted ``MaxAbsScaler`` + ``LogisticRegression(C=c)`` pipeline (one BLAS thread, warnings off)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler
    from threadpoolctl import threadpool_limits

    clf = make_pipeline(MaxAbsScaler(), LogisticRegression(C=c, max_iter=1000, random_state=seed))
    # One BLAS/OpenMP thread: these small sparse fits are ~10x slower with
    # threads contending for the cores the model also uses.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def choose_c(x, labels: np.ndarray, val: np.ndarray, train: np.ndarray, seed: int = 0) -> tuple[float, list | None]:
    """``(C, validation accuracy per C of C_GRID)``: the C that predicts the validation split best.

    ``x`` ``[n, d_sae]`` (sparse), ``labels`` ``[n]``; ``val``/``train`` boolean masks
    (fold 1 and folds 2-4). Ties go to the smaller ``C``. Returns ``(1.0, None)``
    when the split cannot choose (no validation image, fewer than two classes in ``train``).
    """
    if val.sum() == 0 or len(np.unique(labels[train])) < 2:
        return 1.0, None
    scores = [float((_fit(x[train], labels[train], c, seed).predict(x[val]) == labels[val]).mean()) for c in C_GRID]
    return C_GRID[int(np.argmax(scores))], scores  # argmax takes the first best: the smallest C


class ProbingAccumulator:
    """Keeps each labelled image's top-``k`` per-image code; fits the probes in :meth:`finish`.

    Args:
        d_sae, k: the SAE's width and budget.
        budgets: the ``m`` values (default ``{1, 2, 4, 8, k}``, those <= k).
        seed: the logistic regression's random state.
    """

    def __init__(self, d_sae: int, k: int, budgets: tuple[int, ...] | None = None, seed: int = 0):
        self.d_sae, self.k, self.seed = d_sae, k, seed
        self.budgets = tuple(sorted({m for m in (budgets or (1, 2, 4, 8, k)) if 1 <= m <= k}))
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.indices: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.n_images = 0
        self.bootstrap = None
        self.test_images: np.ndarray | None = None  # set by finish()
        self.test_hits: np.ndarray | None = None

    @torch.no_grad()
    def accumulate(self, batch: SuiteBatch) -> None:
        ic = batch.image_codes
        if batch.bootstrap is not None:
            check_same_bootstrap(self.bootstrap, batch.bootstrap)
            self.bootstrap = batch.bootstrap
        self.n_images += len(ic.images)
        keep = ic.labels >= 0
        if not keep.any():
            return
        vals, idx = ic.max_acts[keep].topk(min(self.k, self.d_sae), dim=1)
        self.images.append(ic.images[keep])
        self.labels.append(ic.labels[keep])
        self.indices.append(idx.to(torch.int32))
        self.values.append(vals)

    def merge(self, other: "ProbingAccumulator") -> None:
        check_same_bootstrap(self.bootstrap, other.bootstrap)
        self.bootstrap = self.bootstrap or other.bootstrap
        self.images += other.images
        self.labels += other.labels
        self.indices += other.indices
        self.values += other.values
        self.n_images += other.n_images

    def finish(self) -> dict:
        from scipy.sparse import csr_matrix

        if not self.images:
            return {"skipped": "the image set has no labels", "n_images": self.n_images}
        images = torch.cat(self.images).numpy()
        order = np.argsort(images, kind="stable")
        images = images[order]
        labels = torch.cat(self.labels).numpy()[order]
        idx = torch.cat(self.indices).numpy()[order]
        vals = torch.cat(self.values).numpy()[order]  # sorted descending within each row
        f = fold(images)  # 0: test; 1: validation (chooses C); 2-4: fitted on while choosing
        test, val, inner = f == 0, f == 1, f >= 2
        out = {"n_images": self.n_images, "n_labelled": int(len(images)), "n_train": int((~test).sum()),
               "n_test": int(test.sum()), "n_classes": int(len(np.unique(labels))), "budgets": list(self.budgets)}
        train_classes = np.unique(labels[~test])
        if len(train_classes) < 2 or test.sum() == 0:
            out.update(accuracy=[None] * len(self.budgets), chance=None,
                       reason="probing needs at least two classes in the train split and one held-out image")
            return out
        majority = train_classes[np.argmax([(labels[~test] == c).sum() for c in train_classes])]
        out["chance"] = float((labels[test] == majority).mean())
        w = self.bootstrap.weights(torch.from_numpy(images[test])) if self.bootstrap is not None else None
        correct, acc, converged, chosen, val_scores = [], [], [], [], []
        n = len(images)
        for m in self.budgets:
            v, i = vals[:, :m], idx[:, :m]
            rows = np.repeat(np.arange(n), m)
            x = csr_matrix((v.ravel().astype(np.float64), (rows, i.ravel())), shape=(n, self.d_sae))
            x.eliminate_zeros()
            c, scores = choose_c(x, labels, val, inner, self.seed)
            clf = _fit(x[~test], labels[~test], c, self.seed)
            hit = clf.predict(x[test]) == labels[test]
            acc.append(float(hit.mean()))
            correct.append(hit)
            converged.append(bool(clf[-1].n_iter_.max() < clf[-1].max_iter))
            chosen.append(c)
            val_scores.append(scores)
        out["C"] = chosen
        out["C_chosen_on"] = ("validation split (fold 1 of the train images)" if all(s is not None for s in val_scores)
                              else "default C = 1 where the validation split could not choose")
        out["validation_accuracy"] = {"C_grid": list(C_GRID), "per_budget": val_scores}
        out["accuracy"] = acc
        out["converged"] = converged
        # Per held-out image and budget, whether the probe was right ([n_test, n_budgets] bool, images sorted):
        # what a paired test between two SAEs on the same images (McNemar) needs.
        self.test_images, self.test_hits = images[test], np.stack(correct, axis=1)
        if w is not None:
            hits = torch.from_numpy(np.stack(correct + [labels[test] == majority], axis=1).astype(np.float64))
            total = w.sum(dim=1, keepdim=True)
            reps = torch.where(total > 0, (w @ hits) / total.clamp_min(1e-300), torch.full_like(total, float("nan")))
            out["intervals"] = interval_dict({"accuracy": reps[:, :-1], "chance": reps[:, -1]})
        return out
