"""What the service loads once at start-up and shares between requests, read-only: the model,
its atlas, the 2-D map of the reference space, the MoA and compound summaries and the
explanations. Inference runs under one lock (:meth:`ServiceState.predict`); everything else
a request touches is its own."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from moaspace.errors import InputError, MoaspaceError

logger = logging.getLogger(__name__)

#: most reference points drawn on the map (a seeded subsample of the atlas)
MAP_POINTS = 4000
#: files of ``moaspace explain`` the page shows (optional)
EXPLAIN_FILES = ("top_genes.csv", "enrichment.csv")


@dataclass
class Explanations:
    """Top genes and pathways per MoA from an ``explain/`` folder (empty without one)."""

    folder: Path | None = None
    genes: dict[str, list[dict]] = field(default_factory=dict)
    pathways: dict[str, list[dict]] = field(default_factory=dict)

    def of(self, moa: str, n_genes: int = 10, n_pathways: int = 5) -> dict | None:
        """The MoA's top genes and pathways, or None when there are none."""
        if moa not in self.genes and moa not in self.pathways:
            return None
        return {"genes": self.genes.get(moa, [])[:n_genes],
                "pathways": self.pathways.get(moa, [])[:n_pathways]}


def find_explain_dir(model_dir: Path) -> Path | None:
    """``explain/`` inside the model directory or beside it (``moaspace demo`` writes
    ``OUT/model`` and ``OUT/explain``), if it holds an explanation file."""
    for folder in (model_dir / "explain", model_dir.parent / "explain"):
        if folder.is_dir() and any((folder / f).is_file() for f in EXPLAIN_FILES):
            return folder
    return None


def read_explanations(folder: Path | None) -> Explanations:
    """Top genes (by rank) and pathways (by FDR, then |NES|) per MoA; a file that cannot be
    read is skipped with a warning (the explanations are optional)."""
    out = Explanations(folder=folder)
    if folder is None:
        return out
    try:
        genes = pd.read_csv(folder / "top_genes.csv")
        genes = genes.sort_values(["moa", "rank"])
        for moa, rows in genes.groupby("moa"):
            out.genes[str(moa)] = [
                {"gene_id": str(r.gene_id), "symbol": str(r.gene_symbol),
                 "attribution": float(r.attribution)} for r in rows.itertuples()]
    except (OSError, ValueError, KeyError, AttributeError, pd.errors.ParserError) as exc:
        logger.warning("%s/top_genes.csv: not used (%s)", folder, exc)
    try:
        enr = pd.read_csv(folder / "enrichment.csv")
        enr = enr.assign(abs_nes=enr["nes"].abs()).sort_values(["fdr", "abs_nes"],
                                                               ascending=[True, False])
        for moa, rows in enr.groupby("moa"):
            out.pathways[str(moa)] = [
                {"pathway": str(r.pathway), "nes": float(r.nes), "fdr": float(r.fdr)}
                for r in rows.itertuples()]
    except (OSError, ValueError, KeyError, AttributeError, pd.errors.ParserError) as exc:
        logger.warning("%s/enrichment.csv: not used (%s)", folder, exc)
    return out


class ServiceState:
    """The model and everything derived from it once (see the module docstring).

    Parameters
    ----------
    model_dir : str or os.PathLike
        A saved model directory (``MoaModel.load``).
    explain_dir : str or os.PathLike, optional
        Folder of ``moaspace explain`` output; default: :func:`find_explain_dir`.
    """

    def __init__(self, model_dir, explain_dir=None):
        from moaspace.model import MoaModel

        self.model_dir = Path(model_dir)
        self.model = MoaModel.load(self.model_dir)
        self.lock = threading.Lock()
        ref = getattr(self.model, "atlas", None)  # the atlas ("reference" in older versions)
        if not isinstance(ref, ad.AnnData):
            ref = self.model.atlas
        self.ref_z = np.asarray(ref.X, dtype=np.float32)
        obs = ref.obs
        self.ref_moa = obs["moa"].astype(str).to_numpy()
        self.ref_compound = obs["pert_id"].astype(str).to_numpy()
        self.ref_name = (obs["cmap_name"].astype(str).to_numpy() if "cmap_name" in obs.columns
                         else self.ref_compound)
        # the MoAs with atlas compounds to browse (a multi_moa_classes model can also call
        # MoAs only multi-MoA training compounds list: they have no atlas members)
        self.classes = sorted(set(self.ref_moa))
        self._fit_map()
        self._compound_table()
        folder = Path(explain_dir) if explain_dir is not None else find_explain_dir(
            self.model_dir)
        self.explanations = read_explanations(folder)
        logger.info("serving %s: %d MoAs, %d reference compounds, %d atlas signatures%s",
                    self.model_dir, len(self.classes), len(self.compounds), len(self.ref_z),
                    f", explanations from {folder}" if folder else "")

    # ------------------------------------------------------------------ start-up
    def _fit_map(self) -> None:
        """PCA of the atlas embeddings: the plane every map point (and query) is put on."""
        self.map_mean = self.ref_z.mean(axis=0)
        centred = self.ref_z - self.map_mean
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        self.map_axes = vt[:2].astype(np.float32)
        xy = self.project(self.ref_z)
        rng = np.random.default_rng(0)
        keep = np.sort(rng.choice(len(xy), min(MAP_POINTS, len(xy)), replace=False))
        self.map_points = {"x": xy[keep, 0].round(4).tolist(), "y": xy[keep, 1].round(4).tolist(),
                           "moa": [self.classes.index(m) for m in self.ref_moa[keep]],
                           "compound": self.ref_compound[keep].tolist()}
        self.map_centres = {m: xy[self.ref_moa == m].mean(axis=0).round(4).tolist()
                            for m in self.classes}

    def _compound_table(self) -> None:
        """One row per reference compound (MoA, name, signatures) and its unit-norm centre."""
        frame = pd.DataFrame({"compound": self.ref_compound, "moa": self.ref_moa,
                              "name": self.ref_name})
        groups = frame.groupby("compound", sort=True)
        self.compounds = groups.agg(moa=("moa", "first"), name=("name", "first"),
                                    n_signatures=("moa", "size"))
        codes = pd.Categorical(self.ref_compound, categories=self.compounds.index).codes
        centres = np.zeros((len(self.compounds), self.ref_z.shape[1]), np.float64)
        np.add.at(centres, codes, self.ref_z)
        norms = np.linalg.norm(centres, axis=1, keepdims=True)
        self.compound_centres = (centres / np.maximum(norms, 1e-12)).astype(np.float32)
        self.compound_moa = self.compounds["moa"].to_dict()

    # ------------------------------------------------------------------ per request
    def project(self, z: np.ndarray) -> np.ndarray:
        """2-D map coordinates of embeddings (the atlas PCA)."""
        return (np.asarray(z, np.float32) - self.map_mean) @ self.map_axes.T

    def predict(self, adata, compound_key: str | None):
        """``moaspace.tl.predict`` on the request's own AnnData, under the inference lock."""
        from moaspace.tl import predict

        if compound_key is not None and compound_key not in adata.obs.columns:
            cols = [str(c) for c in adata.obs.columns][:12]
            raise InputError(f"the query has no column {compound_key!r} to group by "
                             f"(its columns: {cols})")
        if adata.n_obs == 0:
            raise InputError("the query holds no signatures")
        with self.lock:
            return predict(self.model, adata, compound_key=compound_key)

    def info(self) -> dict:
        """What the page shows about the model."""
        cal = self.model.calibration
        return {"model": self.model_dir.name, "moas": len(self.classes),
                "compounds": len(self.compounds), "atlas_signatures": len(self.ref_z),
                "genes": len(self.model.genes), "calibrated": cal is not None,
                "explanations": self.explanations.folder is not None,
                "predictor": str(getattr(self.model.config, "predictor", "knn"))}

    def moa_summary(self) -> list[dict]:
        counts = self.compounds.groupby("moa")["n_signatures"].agg(["size", "sum"])
        return [{"moa": m, "compounds": int(counts.loc[m, "size"]),
                 "signatures": int(counts.loc[m, "sum"]),
                 "explained": self.explanations.of(m) is not None} for m in self.classes]

    def moa_detail(self, moa: str) -> dict:
        """Members, prototype (unit-norm mean embedding), map centre and explanations."""
        if moa not in self.classes:
            raise KeyError(moa)
        members = self.compounds[self.compounds["moa"] == moa]
        centre = self.ref_z[self.ref_moa == moa].mean(axis=0)
        centre = centre / max(float(np.linalg.norm(centre)), 1e-12)
        return {"moa": moa,
                "members": [{"compound": c, "name": str(r["name"]),
                             "signatures": int(r["n_signatures"])}
                            for c, r in members.iterrows()],
                "prototype": centre.round(6).tolist(), "map": self.map_centres[moa],
                "explanation": self.explanations.of(moa, n_genes=20, n_pathways=10)}

    def neighbors(self, compound: str, k: int) -> list[dict]:
        """The ``k`` reference compounds whose centres are nearest (cosine) to ``compound``'s."""
        if compound not in self.compounds.index:
            raise KeyError(compound)
        pos = self.compounds.index.get_loc(compound)
        sims = self.compound_centres @ self.compound_centres[pos]
        sims[pos] = -np.inf
        order = np.argsort(-sims, kind="stable")[:k]
        return [{"compound": self.compounds.index[i], "name": str(self.compounds["name"].iloc[i]),
                 "moa": str(self.compounds["moa"].iloc[i]), "similarity": round(float(sims[i]), 4)}
                for i in order]


def check_model_dir(model_dir) -> Path:
    """A model directory to serve: exists and holds ``config.json`` (checked before binding)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise MoaspaceError(f"model directory not found: {path}")
    return path
