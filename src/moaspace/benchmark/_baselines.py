"""Classical baselines that a biologist would use today, on the same splits.

* ``raw_knn``: cosine kNN on the raw z-score signatures (CMap-style connectivity);
* ``pca_knn``: the same after PCA (fitted on the training signatures only);
* ``pca_lda``: shrinkage LDA on PCA components, a strong classical baseline;
* ``logreg``: multinomial logistic regression on standardised PCA components;
* ``lda``: shrinkage LDA (``lsqr``, Ledoit-Wolf ``shrinkage="auto"``) on all genes:
  the strongest baseline on the real consensus signatures and under correlated noise;
* ``linear_svm``: a linear support-vector machine (one-vs-rest, ``C=0.001``) on all
  genes clipped at +-10; its scores are the softmax of the decision values;
* ``logreg_ovr``: the multi-label baseline: one logistic regression per MoA (one vs
  rest) on standardised PCA components, fitted on MoA *sets*, so that a compound with
  several MoAs is a positive of each; its scores are the per-MoA probabilities and its
  set output the MoAs of probability >= 0.5 (the top MoA at least).

Every baseline exposes ``fit(X, y)`` and ``predict_scores(X) -> (scores, classes)``
so the benchmark treats them and the neural models alike; the single-label ones take
one MoA per row, those of ``MULTILABEL`` a MoA set per row and also have
``predict_sets(X)``. Nothing is fitted on test data.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, MultiLabelBinarizer, StandardScaler
from sklearn.svm import LinearSVC

from moaspace._core.neighbors import knn_predict
from moaspace._core.sets import join_moa_set, parse_moa_sets
from moaspace.errors import InputError

logger = logging.getLogger(__name__)


class KnnBaseline:
    """Cosine kNN with a distance-weighted vote, optionally after PCA."""

    def __init__(self, k: int = 10, n_components: int | None = None, seed: int = 0):
        self.k, self.n_components, self.seed = k, n_components, seed

    def fit(self, X: np.ndarray, y) -> KnnBaseline:
        self.pca_ = None
        if self.n_components:
            n = min(self.n_components, X.shape[0] - 1, X.shape[1])
            self.pca_ = PCA(n_components=n, random_state=self.seed).fit(X)
        self.reference_ = self._transform(X)
        self.labels_ = np.asarray(y).astype(str)
        self.classes_ = sorted(set(self.labels_))
        return self

    def _transform(self, X):
        return X if self.pca_ is None else self.pca_.transform(X).astype(np.float32)

    def predict_scores(self, X: np.ndarray):
        return knn_predict(self._transform(X), self.reference_, self.labels_, k=self.k,
                           classes=self.classes_)


class SklearnBaseline:
    """Wrap a scikit-learn classifier with predict_proba."""

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y) -> SklearnBaseline:
        self.estimator.fit(X, np.asarray(y).astype(str))
        self.classes_ = [str(c) for c in self.estimator.classes_]
        return self

    def predict_scores(self, X):
        return self.estimator.predict_proba(X).astype(np.float32), self.classes_


class DecisionBaseline(SklearnBaseline):
    """A classifier without probabilities: scores are the softmax of its decision values
    (same argmax and ranking, which is what the metrics read)."""

    def predict_scores(self, X):
        from scipy.special import softmax

        values = np.asarray(self.estimator.decision_function(X), dtype=np.float64)
        if values.ndim == 1:  # two classes: one decision value
            values = np.stack([-values, values], axis=1)
        return softmax(values, axis=1).astype(np.float32), self.classes_


class MultiLabelBaseline:
    """A multi-label scikit-learn estimator (fitted on a 0/1 matrix, one column per MoA,
    with per-column ``predict_proba``) over MoA sets.

    ``fit(X, y)`` takes one MoA set per row (sets, or ``|``-joined strings as in
    ``obs["moa_set"]``); ``predict_scores`` gives the per-MoA probabilities (they need not
    sum to 1) and ``predict_sets`` the MoAs at or above ``threshold``, with the top MoA
    always in (every labelled compound has one at least).
    """

    def __init__(self, estimator, threshold: float = 0.5):
        self.estimator, self.threshold = estimator, threshold

    def fit(self, X, y) -> MultiLabelBaseline:
        sets = parse_moa_sets(y)
        empty = [i for i, s in enumerate(sets) if not s]
        if empty:
            raise InputError(f"{len(empty)} training rows have no MoA (rows {empty[:5]})")
        self.binarizer_ = MultiLabelBinarizer()
        Y = self.binarizer_.fit_transform(sets)
        if Y.shape[1] < 2:
            raise InputError("a multi-label baseline needs two MoAs at least, got "
                             f"{list(self.binarizer_.classes_)}")
        self.estimator.fit(X, Y)
        self.classes_ = [str(c) for c in self.binarizer_.classes_]
        return self

    def predict_scores(self, X):
        return np.asarray(self.estimator.predict_proba(X), dtype=np.float32), self.classes_

    def predict_sets(self, X, scores: np.ndarray | None = None) -> list[str]:
        """The ``|``-joined predicted set of each row (``scores``: those of
        ``predict_scores(X)``, to skip a second prediction)."""
        if scores is None:
            scores, _ = self.predict_scores(X)
        chosen = scores >= self.threshold
        chosen[np.arange(len(scores)), scores.argmax(axis=1)] = True
        names = np.asarray(self.classes_, dtype=object)
        return [join_moa_set(names[row]) for row in chosen]


def _clip(x, bound: float = 10.0):
    return np.clip(x, -bound, bound)


def make_baseline(name: str, *, seed: int = 0, k: int = 10, n_components: int = 100):
    """Build a classical baseline by name (see the module docstring).

    Parameters
    ----------
    name : str
        One of ``CLASSICAL``: ``"raw_knn"``, ``"pca_knn"``, ``"pca_lda"``, ``"logreg"``,
        ``"lda"``, ``"linear_svm"`` or ``"logreg_ovr"`` (multi-label, ``MULTILABEL``).
    seed : int, default 0
        Random state of the PCA, logistic regression and linear SVM.
    k : int, default 10
        Neighbours of the kNN baselines (distance-weighted cosine vote).
    n_components : int, default 100
        PCA components of ``pca_knn``, ``pca_lda``, ``logreg`` and ``logreg_ovr``
        (``pca_knn`` caps it at n_samples - 1 and n_genes).

    Returns
    -------
    KnnBaseline or SklearnBaseline or DecisionBaseline or MultiLabelBaseline
        An unfitted baseline with ``fit(X, y)`` (returns itself) and
        ``predict_scores(X) -> (scores, classes)``: scores of shape (n, n_classes) and
        the class names of their columns. ``y`` is one MoA per row, or for
        ``MultiLabelBaseline`` one MoA set per row (which also has ``predict_sets``).

    Raises
    ------
    ValueError
        If ``name`` is not a known baseline.
    """
    if name == "raw_knn":
        return KnnBaseline(k=k, seed=seed)
    if name == "pca_knn":
        return KnnBaseline(k=k, n_components=n_components, seed=seed)
    if name == "pca_lda":
        return SklearnBaseline(make_pipeline(
            PCA(n_components=n_components, random_state=seed),
            LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"),
        ))
    if name == "logreg":
        return SklearnBaseline(make_pipeline(
            PCA(n_components=n_components, random_state=seed),
            StandardScaler(),
            LogisticRegression(C=0.1, max_iter=2000, random_state=seed),
        ))
    if name == "lda":
        return SklearnBaseline(LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"))
    if name == "linear_svm":
        return DecisionBaseline(make_pipeline(
            FunctionTransformer(_clip),
            LinearSVC(C=0.001, max_iter=5000, random_state=seed),
        ))
    if name == "logreg_ovr":
        return MultiLabelBaseline(make_pipeline(
            PCA(n_components=n_components, random_state=seed),
            StandardScaler(),
            OneVsRestClassifier(LogisticRegression(C=0.1, max_iter=2000, random_state=seed)),
        ))
    raise ValueError(f"unknown baseline {name!r}")


#: baselines fitted on MoA sets (``obs["moa_set"]``: multi-MoA compounds included)
MULTILABEL = ("logreg_ovr",)
CLASSICAL = ("raw_knn", "pca_knn", "pca_lda", "logreg", "lda", "linear_svm", *MULTILABEL)
