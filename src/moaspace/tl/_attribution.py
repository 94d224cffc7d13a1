"""Per-MoA gene importance: the score ``predict`` calls with, explained per gene.

**The score.** By default (``view="predictor"``) the model's own predictor: for each MoA the
cosine between a signature's prototype layer and the MoA's prototype (``hidden_prototype``,
the default predictor), or between its unit embedding and the MoA's centre in the atlas
(``prototype``; also the differentiable stand-in for ``knn``, whose vote has no gradient).
Their softmax at temperature 0.1 is exactly ``predict(model, x).obsm["moa_scores"]``
(:func:`score_module`). ``view="arcface_head"`` explains the cosine of the embedding to the
ArcFace head's MoA directions instead (what explain attributed before issue #27: a view of
the embedding that no call is made with).

**Two readings, two questions.**

``signed`` (the direction; the *pattern* of the score, Haufe et al. 2014, NeuroImage
87:96-110): the covariance, across all the signatures explained, between each gene (as the
model sees it, clipped) and the model's calibrated probability of the MoA (``predict``'s
``obsm["moa_proba"]``; the softmax score where the model has no per-MoA calibration),
divided by that probability's standard deviation (z-score units per standard deviation).
Positive: the gene is **up** in the signatures the model gives the MoA; negative: **down**.
For a linear score ``w . x`` it is ``Cov(x) w``, the forward model that belongs to the
filter ``w``. This is the reading to compare with a MoA's known up- and down-regulated
genes. Why the calibrated probability: for any ``x``, ``Cov(x, P(c | x)) = Cov(x, 1[y = c])``
(the law of total covariance), so the pattern of a calibrated probability estimates the
shift of the MoA's mean signature as the model sees the class; the softmax at temperature 0.1
is no probability (the real statins' own scores are 0.1-0.4) and weighs the drugs of other
MoAs that it scores a little too much against the members, diluting a weak programme.

``contribution`` (the weights; integrated gradients, captum): ``(x - b) * mean gradient of
the MoA's cosine along the straight path from b to x``; summed over genes it is
``cos(x) - cos(b)`` (the convergence delta reports the error). Positive: the gene's value,
relative to signatures of other MoAs, raises the MoA's score. These are the weights of a
*filter*, not directions: the model whitens its input (within-MoA covariance,
``docs/model.md``), so a gene whose rise is already carried by its co-regulated genes can
weigh against its MoA although it rises in every one of its signatures (a suppressor
variable). Their mean absolute value ranks the genes the call relies on. The cosine rather
than the softmax is integrated because the softmax contrasts MoAs: genes two MoAs share (the
MAPK cascade of MEK and RAF inhibitors on the simulator) cancel in it (18 of 19 planted
pathways recovered against 19 of 19 with the cosine, ``docs/benchmarks.md``).

**Baselines.** The paths start at signatures of *other* MoAs from the data being explained
(``n_baselines`` of them per signature, seeded; expected gradients, Erion et al. 2021), not at
the all-zero signature: the cosines read unit-normalised layers, which are undefined at zero
and barely change along the first part of a straight path from it, so a zero baseline
attributes mostly how a signature's own genes trade off against each other (along a stretch
where the normalised layer is constant the attributions sum to zero and grow as 1/step near
zero). The question answered is "what makes this signature score as MoA c rather than as the
drugs of other MoAs".

Contributions are averaged per MoA over the signatures the predictor calls correctly
(``only_correct``), at most ``max_per_moa`` of them (seeded subsample); the pattern uses
every signature explained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd
import torch
from torch import nn

from moaspace._core.neighbors import prototypes as embedding_prototypes
from moaspace.errors import InputError, MoaspaceError

logger = logging.getLogger(__name__)

#: softmax temperature of the prototype scores (``moaspace._core.neighbors.prototype_scores``)
TEMPERATURE = 0.1
VIEWS = ("predictor", "arcface_head")


def predictor_cosines(model) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The predictor's differentiable per-MoA cosines and its kind.

    The one place that reads how the model calls MoAs (``model.predictor``'s
    ``torch_scores``: the cosines to the MoA prototypes that ``predict`` turns into a
    softmax). ``knn`` has no gradient: the nearest embedding prototype stands in for it.

    Parameters
    ----------
    model : moaspace.model.MoaModel
        A trained or loaded model.

    Returns
    -------
    cosines : callable
        Input z-scores ``(n, genes)`` in the model's gene order -> ``(n, n_moas)`` cosines,
        columns in ``model.moas`` order.
    kind : str
        ``"hidden_prototype"`` or ``"prototype"`` (also for a ``knn`` model).

    Raises
    ------
    MoaspaceError
        If the model is not trained.
    """
    net = model.module
    predictor = model.predictor
    if predictor.kind == "knn":
        logger.warning("the kNN vote has no gradient: explaining the nearest embedding "
                       "prototype instead")
        predictor = model.predictor_of("prototype")
    return (lambda x: predictor.torch_scores(net, x)), predictor.kind


class MoaScore(nn.Module):
    """x -> per-MoA scores ``(n, n_moas)`` from per-MoA cosines.

    ``output="probability"``: the softmax of ``cosines(x) / temperature`` (the scores
    ``predict`` writes to ``obsm["moa_scores"]``); ``"cosine"``: the cosines.
    """

    def __init__(self, cosines: Callable[[torch.Tensor], torch.Tensor],
                 temperature: float = TEMPERATURE, output: str = "probability"):
        super().__init__()
        if output not in ("probability", "cosine"):
            raise ValueError(f"output must be 'probability' or 'cosine', got {output!r}")
        self.cosines = cosines
        self.temperature = float(temperature)
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos = self.cosines(x).float()
        if self.output == "cosine":
            return cos
        return torch.softmax(cos / self.temperature, dim=1)


def moa_directions(model) -> tuple[torch.Tensor, list[str], str]:
    """Return the MoA directions of the ArcFace MoA head (the ``arcface_head`` view).

    With an ArcFace MoA head (``moa_head`` with ``weight`` and ``cosine``) the directions
    are its class centres (with several sub-centres per class, the mean of the class's
    normalised sub-centres); otherwise the MoA prototypes of the embedding, the normalised
    mean of the atlas embeddings (``model.atlas``) of each MoA.

    Parameters
    ----------
    model : moaspace.model.MoaModel
        A trained or loaded model.

    Returns
    -------
    directions : torch.Tensor, shape (n_moas, latent_dim)
        One float32 row per MoA, in the order of ``model.moas``.
    moas : list of str
        ``list(model.moas)``.
    source : str
        ``"arcface_head"`` or ``"prototype"``.

    Raises
    ------
    MoaspaceError
        If the model is not trained.
    """
    net = model.module
    head = getattr(net, "moa_head", None)
    if head is not None and hasattr(head, "weight") and hasattr(head, "cosine"):
        weight = head.weight.detach().float()
        k = getattr(head, "sub_centers", 1)
        if k > 1:  # one direction per class: the mean of its sub-centres
            weight = nn.functional.normalize(weight, dim=1).view(len(model.moas), k, -1).mean(1)
        return weight, list(model.moas), "arcface_head"
    ref = model.atlas
    centres, _ = embedding_prototypes(np.asarray(ref.X, dtype=np.float32),
                                      ref.obs["moa"].astype(str).to_numpy(), list(model.moas))
    return torch.as_tensor(centres), list(model.moas), "prototype"


def score_module(model, view: str = "predictor") -> tuple[MoaScore, list[str], str]:
    """The differentiable per-MoA score that :func:`gene_importance` attributes.

    Parameters
    ----------
    model : moaspace.model.MoaModel
        A trained or loaded model.
    view : {"predictor", "arcface_head"}, default "predictor"
        ``predictor``: the scores ``predict`` calls with (``obsm["moa_scores"]``, the
        default predictor's softmax over prototype cosines); ``arcface_head``: the cosine of
        the embedding to the ArcFace head's MoA directions.

    Returns
    -------
    module : MoaScore
        In eval mode; ``module(x)`` is ``(n, n_moas)``, columns in ``model.moas`` order.
    moas : list of str
        ``list(model.moas)``.
    description : str
        What is attributed, for the output files (e.g. ``"predictor hidden_prototype:
        softmax of prototype-layer cosines / 0.1 (obsm['moa_scores'])"``).

    Raises
    ------
    ValueError
        If ``view`` is not one of ``VIEWS``.
    MoaspaceError
        If the model is not trained.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    net = model.module
    net.eval()
    if view == "arcface_head":
        directions, moas, source = moa_directions(model)
        unit = nn.functional.normalize(directions.float(), dim=1)
        module = MoaScore(lambda x: net.encoder(x) @ unit.T, output="cosine")
        return module.eval(), moas, f"arcface_head ({source}): cosine of the embedding"
    cosines, kind = predictor_cosines(model)
    layer = "prototype-layer" if kind == "hidden_prototype" else "embedding"
    return (MoaScore(cosines).eval(), list(model.moas),
            f"predictor {kind}: softmax of {layer} cosines / {TEMPERATURE} "
            "(obsm['moa_scores'] of predict)")


def gene_importance(
    model,
    adata: ad.AnnData,
    *,
    moas: list[str] | None = None,
    moa_key: str = "moa",
    view: str = "predictor",
    only_correct: bool = True,
    max_per_moa: int = 200,
    n_steps: int = 16,
    n_baselines: int = 4,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
    return_contribution: bool = False,
):
    """Integrated gradients of each MoA's score with respect to the input genes.

    The score of MoA ``c`` is the one ``predict`` calls with (:func:`score_module`); the
    paths start at ``n_baselines`` signatures of other MoAs drawn from ``adata``. For each MoA
    at most ``max_per_moa`` of its signatures are attributed; a MoA without signatures to
    explain is skipped with a warning. See the module docstring for the two readings.

    Parameters
    ----------
    model : moaspace.model.MoaModel
        A trained model.
    adata : anndata.AnnData
        Signatures (z-scores) with their MoA in ``obs[moa_key]``; it must hold signatures of
        at least two MoAs (the baselines are the other MoAs' signatures).
    moas : list of str, optional
        MoAs to explain; default None: all of the model's MoAs.
    moa_key : str, default "moa"
        ``obs`` column holding the true MoA of each signature.
    view : {"predictor", "arcface_head"}, default "predictor"
        The score attributed (:func:`score_module`).
    only_correct : bool, default True
        Explain only the signatures whose top score is their true MoA; False: all.
    max_per_moa : int, default 200
        Maximum number of signatures attributed per MoA.
    n_steps : int, default 16
        Integration steps per path (Gauss-Legendre).
    n_baselines : int, default 4
        Paths per signature, each from a different other-MoA signature.
    batch_size : int, default 32
        Signatures per attribution batch (times ``n_steps`` rows per forward pass).
    seed : int, default 0
        Seed of the per-MoA subsample and of the baselines.
    progress : bool, default False
        Show a tqdm progress bar over MoAs.
    return_contribution : bool, default False
        Also return the mean IG contributions (a fourth item).

    Returns
    -------
    signed : pandas.DataFrame, shape (n_genes, 1 + n_explained_moas)
        The pattern per gene (rows, indexed by ``model.genes``) and explained MoA (columns),
        after a first ``gene_symbol`` column (the gene ids when the model has no symbols):
        positive = up, negative = down in the signatures the model gives the MoA
        (:func:`score_patterns` over all signatures of ``adata`` of the MoA's calibrated
        probability, :func:`pattern_scores`; ``info.attrs["pattern_of"]`` says which).
    absolute : pandas.DataFrame
        Same layout: the mean absolute IG contribution (how much each gene moves the score,
        either way).
    info : pandas.DataFrame
        One row per explained MoA (indexed by MoA) with ``moa``, ``n_signatures``,
        ``mean_abs_delta`` (mean |convergence delta| of IG), ``mean_score`` (mean score of
        the attributed signatures), ``mean_cosine`` and ``mean_baseline_cosine`` (the
        attributed cosine at the signatures and at their baselines); ``info.attrs["score"]`` says
        what was attributed, ``info.attrs["view"]`` the view.
    contribution : pandas.DataFrame
        Only with ``return_contribution``: same layout, the mean signed IG contribution.

    Raises
    ------
    InputError
        If ``obs`` has no ``moa_key`` column, ``moas`` names a MoA the model does not
        know, the signatures cannot be aligned to the model's genes, or ``adata`` holds a
        single MoA.
    MoaspaceError
        If the model is not trained, or no MoA had signatures to explain.
    """
    if moa_key not in adata.obs.columns:
        raise InputError(f"obs has no column {moa_key!r} (the MoA of each signature)")
    scorer, classes, description = score_module(model, view)
    # IG attributes the per-MoA cosine (the score before the softmax): the softmax is a
    # contrast between MoAs, so genes two MoAs share (MEK and RAF inhibitors' MAPK cascade on
    # the simulator) cancel in it; the pattern and the calls use the softmax itself
    attributed = MoaScore(scorer.cosines, output="cosine").eval()
    x_all = model.align_genes(adata)
    labels = adata.obs[moa_key].astype(str).to_numpy()
    if len(np.unique(labels)) < 2:
        raise InputError("gene_importance needs signatures of at least two MoAs: the paths "
                         "start at signatures of the other MoAs")
    with torch.no_grad():
        scores = torch.cat([scorer(torch.from_numpy(x_all[i:i + 4096]))
                            for i in range(0, len(x_all), 4096)]).numpy()
    predicted = np.asarray(classes)[scores.argmax(1)]
    wanted = classes if moas is None else list(moas)
    unknown = sorted(set(wanted) - set(classes))
    if unknown:
        raise InputError(f"MoAs not known to the model: {unknown}")
    weights, pattern_of = pattern_scores(model, scores, view)
    patterns = score_patterns(x_all, weights, getattr(model.module.encoder, "clip", None))
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {"signed": {}, "absolute": {}, "contribution": {}}
    info = []
    for moa in _maybe_progress(wanted, progress):
        rows = labels == moa
        if only_correct:
            rows &= predicted == moa
        idx = np.flatnonzero(rows)
        if len(idx) == 0:
            logger.warning("MoA %r: no %ssignatures to explain; skipped", moa,
                           "correctly predicted " if only_correct else "")
            continue
        if len(idx) > max_per_moa:
            idx = np.sort(rng.choice(idx, max_per_moa, replace=False))
        paths = _attribute_moa(attributed, x_all, idx, np.flatnonzero(labels != moa),
                               classes.index(moa), n_steps=n_steps, n_baselines=n_baselines,
                               batch_size=batch_size, rng=rng)
        out["signed"][moa] = patterns[:, classes.index(moa)]
        out["absolute"][moa] = paths["absolute"]
        out["contribution"][moa] = paths["contribution"]
        info.append({"moa": moa, "n_signatures": len(idx), "mean_abs_delta": paths["delta"],
                     "mean_score": float(scores[idx, classes.index(moa)].mean()),
                     "mean_cosine": paths["score"],
                     "mean_baseline_cosine": paths["baseline_score"]})
    if not info:
        raise MoaspaceError("no MoA had signatures to explain (none predicted correctly?)")
    frames = [_gene_frame(model, out[k]) for k in ("signed", "absolute", "contribution")]
    info_frame = pd.DataFrame(info).set_index("moa", drop=False).rename_axis(None)
    info_frame.attrs.update(score=description, attributed=f"{view} cosine (pre-softmax)",
                            pattern_of=pattern_of,
                            view=view, n_steps=n_steps,
                            n_baselines=n_baselines, baseline="signatures of other MoAs")
    if return_contribution:
        return frames[0], frames[1], info_frame, frames[2]
    return frames[0], frames[1], info_frame


def pattern_scores(model, scores: np.ndarray, view: str = "predictor"
                   ) -> tuple[np.ndarray, str]:
    """The per-MoA values whose pattern is the signed table, and what they are.

    Parameters
    ----------
    model : moaspace.model.MoaModel
        A trained model.
    scores : numpy.ndarray, shape (n, n_moas)
        The explained view's scores of the signatures (:func:`score_module`).
    view : {"predictor", "arcface_head"}, default "predictor"
        The view the scores come from.

    Returns
    -------
    values : numpy.ndarray, shape (n, n_moas)
        For the ``predictor`` view of a model calibrated per MoA, the calibrated per-MoA
        probabilities ``predict`` writes to ``obsm["moa_proba"]`` (the same map of the
        same scores); otherwise ``scores``.
    description : str
        What ``values`` are (``info.attrs["pattern_of"]`` of :func:`gene_importance`).
    """
    cal = getattr(model, "calibration", None)
    kind = model.predictor.kind
    if view == "predictor" and cal is not None and kind != "knn":
        # a kNN model's per-MoA map is fitted to vote shares, not to the prototype softmax
        # that stands in for it here
        fitted = cal.class_probabilities(scores, kind)
        if fitted is not None:
            return (np.asarray(fitted[0], dtype=np.float64),
                    "calibrated per-MoA probability (obsm['moa_proba'])")
    return scores, "the attributed score (no per-MoA calibration)"


def _maybe_progress(items, progress: bool):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="integrated gradients", unit="MoA")


def _attribute_moa(scorer: MoaScore, x_all: np.ndarray, idx: np.ndarray, others: np.ndarray,
                   target: int, *, n_steps: int, n_baselines: int, batch_size: int,
                   rng: np.random.Generator) -> dict:
    """IG of MoA ``target`` for rows ``idx``, each from ``n_baselines`` rows of ``others``.

    Returns the mean signed and absolute IG contributions, the mean |convergence delta| and
    the mean score at the signatures and at the baselines.
    """
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(scorer, multiply_by_inputs=False)  # the mean path gradient
    n_genes = x_all.shape[1]
    sums = {k: np.zeros(n_genes) for k in ("contribution", "absolute")}
    deltas, base_scores, x_scores, count = [], [], [], 0
    for start in range(0, len(idx), batch_size):
        xb = torch.from_numpy(x_all[idx[start:start + batch_size]])
        for _ in range(n_baselines):
            bb = torch.from_numpy(x_all[rng.choice(others, len(xb))])
            grad = ig.attribute(xb, baselines=bb, target=target, n_steps=n_steps).detach()
            contrib = (grad * (xb - bb)).double().numpy()
            with torch.no_grad():
                at_x, at_b = scorer(xb)[:, target], scorer(bb)[:, target]
            base_scores.append(at_b.numpy())
            x_scores.append(at_x.numpy())
            deltas.append(np.abs(contrib.sum(1) - (at_x - at_b).double().numpy()))
            sums["contribution"] += contrib.sum(0)
            sums["absolute"] += np.abs(contrib).sum(0)
            count += len(xb)
    out = {k: v / count for k, v in sums.items()}
    out["delta"] = float(np.concatenate(deltas).mean())
    out["baseline_score"] = float(np.concatenate(base_scores).mean())
    out["score"] = float(np.concatenate(x_scores).mean())
    return out


def score_patterns(x: np.ndarray, scores: np.ndarray, clip: float | None = None,
                   block: int = 8192) -> np.ndarray:
    """The pattern of each score column: ``Cov(x_g, s) / sd(s)`` for every gene ``g``.

    Parameters
    ----------
    x : numpy.ndarray, shape (n, genes)
        Signatures (z-scores); clipped to ``[-clip, clip]`` first, as the model sees them.
    scores : numpy.ndarray, shape (n, k)
        One score per row and column (e.g. per MoA).
    clip : float, optional
        Clip of the model's input (``None``: none).
    block : int, default 8192
        Rows per block (the signatures are never copied whole).

    Returns
    -------
    numpy.ndarray, shape (genes, k)
        Covariance of each gene with each score over the rows, over the score's standard
        deviation (0 for a constant score): z-score units per standard deviation of the score.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s - s.mean(0)
    out = np.zeros((x.shape[1], s.shape[1]))
    for start in range(0, len(x), block):  # sum_i x_i (s_i - mean s): no centring of x needed
        xb = np.asarray(x[start:start + block], dtype=np.float64)
        if clip is not None:
            xb = np.clip(xb, -clip, clip)
        out += xb.T @ s[start:start + block]
    sd = s.std(0)
    return np.where(sd > 0, out / (len(s) * np.where(sd > 0, sd, 1.0)), 0.0)


def _gene_frame(model, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    genes = pd.Index(model.genes)
    symbols = (model.gene_symbols if len(model.gene_symbols) == len(model.genes)
               else list(model.genes))
    frame = pd.DataFrame(columns, index=genes)
    frame.insert(0, "gene_symbol", symbols)
    return frame


def top_genes(importance: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """Long table of the ``n`` genes with the largest |value| per MoA.

    Parameters
    ----------
    importance : pandas.DataFrame
        Genes x MoAs table with a ``gene_symbol`` column, indexed by gene id, as returned
        by :func:`gene_importance`.
    n : int, default 20
        Genes kept per MoA.

    Returns
    -------
    pandas.DataFrame
        One row per (MoA, gene) with columns ``moa``, ``rank`` (1 = largest |value|),
        ``gene_id``, ``gene_symbol``, ``attribution`` (the table's signed value) and
        ``direction`` (``up`` or ``down``: the sign of the value, meaningful for the signed
        pattern).
    """
    rows = []
    for moa in [c for c in importance.columns if c != "gene_symbol"]:
        col = importance[moa]
        for rank, gene in enumerate(col.abs().sort_values(ascending=False).index[:n], 1):
            value = float(col[gene])
            rows.append({"moa": moa, "rank": rank, "gene_id": gene,
                         "gene_symbol": importance.loc[gene, "gene_symbol"],
                         "attribution": value, "direction": "up" if value >= 0 else "down"})
    return pd.DataFrame(rows)
