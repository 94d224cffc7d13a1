"""A tiny hierarchical synthetic L1000-like AnnData for model and split tests.

Signature = strength * (MoA centroid + compound offset) * cell response
+ cell baseline + noise, so signatures of one compound are closer to each
other than to other compounds of the same MoA, which are closer than other
MoAs: the hierarchy the model must learn, with known truth.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

CELLS = ("A549", "MCF7", "PC3", "VCAP", "HT29", "NCIH508")


def make_synthetic(
    n_moas: int = 6,
    compounds_per_moa: int = 6,
    cells: tuple[str, ...] = CELLS[:4],
    sigs_per_compound_cell: int = 3,
    n_genes: int = 64,
    moa_scale: float = 1.0,
    compound_scale: float = 0.8,
    cell_scale: float = 0.6,
    noise: float = 1.0,
    n_signatures: int | None = None,
    seed: int = 0,
) -> ad.AnnData:
    """Return signatures x genes; ``n_signatures`` (if given) overrides the per-cell count.

    MoA and compound effects are sparse (about a fifth of the genes), as real
    perturbations move a minority of the landmark genes.
    """
    rng = np.random.default_rng(seed)
    n_cpd = n_moas * compounds_per_moa
    sparse = lambda shape: rng.normal(size=shape) * (rng.random(shape) < 0.2)  # noqa: E731
    moa_c = sparse((n_moas, n_genes)) * 2.5 * moa_scale
    cpd_o = sparse((n_cpd, n_genes)) * 2.5 * compound_scale
    cell_b = rng.normal(size=(len(cells), n_genes)) * cell_scale
    cell_r = 1 + 0.3 * rng.normal(size=(len(cells), n_genes))
    cpd_moa = np.repeat(np.arange(n_moas), compounds_per_moa)

    if n_signatures is None:
        cpd_idx = np.repeat(np.arange(n_cpd), len(cells) * sigs_per_compound_cell)
        cell_idx = np.tile(np.repeat(np.arange(len(cells)), sigs_per_compound_cell), n_cpd)
    else:
        cpd_idx = rng.integers(0, n_cpd, n_signatures)
        cell_idx = rng.integers(0, len(cells), n_signatures)
    n = len(cpd_idx)
    strength = rng.uniform(0.5, 1.5, n).astype(np.float32)
    x = np.empty((n, n_genes), dtype=np.float32)
    for start in range(0, n, 20_000):  # chunks keep the 100k x 978 benchmark in memory
        sl = slice(start, start + 20_000)
        c, k = cpd_idx[sl], cell_idx[sl]
        effect = (moa_c[cpd_moa[c]] + cpd_o[c]) * cell_r[k]
        x[sl] = (
            strength[sl, None] * effect + cell_b[k] + noise * rng.normal(size=(len(c), n_genes))
        )
    moa_names = np.array([f"MoA_{i:02d} inhibitor" for i in range(n_moas)])
    pert_ids = np.array([f"BRD-K{i:08d}" for i in range(n_cpd)])
    obs = pd.DataFrame(
        {
            "sig_id": [f"SIG{i:07d}" for i in range(n)],
            "pert_id": pert_ids[cpd_idx],
            "cmap_name": [f"drug{i}" for i in cpd_idx],
            "moa": moa_names[cpd_moa[cpd_idx]],
            "cell_iname": np.array(cells)[cell_idx],
            "pert_dose": np.round(strength * 5, 2),
            "pert_time": rng.choice([6.0, 24.0], n),
            "tas": rng.uniform(0.1, 0.6, n).round(3),
        }
    )
    obs.index = pd.Index(obs["sig_id"].to_numpy(), name=None)
    var = pd.DataFrame(
        {"gene_symbol": [f"GENE{i}" for i in range(n_genes)]},
        index=pd.Index([str(1000 + i) for i in range(n_genes)]),
    )
    return ad.AnnData(X=x, obs=obs, var=var)


def split_validation_compounds(adata, n_val: int = 6, seed: int = 0) -> set:
    """Set ``obs["split"]``: ``n_val`` compounds drawn at random (``seed``) are ``val``, the
    rest ``train``; returns the validation compounds."""
    obs = adata.obs
    cpds = np.array(sorted(obs["pert_id"].unique()))
    val = set(np.random.default_rng(seed).choice(cpds, n_val, replace=False))
    obs["split"] = np.where(obs["pert_id"].isin(val), "val", "train")
    return val


def write_blocked_h5ad(path, n_obs: int, n_vars: int, *, n_moas: int = 10,
                       n_compounds: int = 100, centroid_scale: float = 1.0, seed: int = 0,
                       block: int = 1000) -> None:
    """A labelled float32 .h5ad written block by block (never whole in memory).

    ``n_compounds`` compounds over ``n_moas`` MoAs (compound ``c`` has MoA
    ``c % n_moas``); compound group ``(c // n_moas) % 10`` 0 is validation, 1
    test, the rest training. X = ``centroid_scale`` x MoA centroid + unit
    noise (one block of noise, rows reshuffled per block), stored as anndata's
    dense array. For out-of-core training tests and benchmarks.
    """
    import h5py

    rng = np.random.default_rng(seed)
    cpd = rng.integers(0, n_compounds, n_obs)
    moa, group = cpd % n_moas, (cpd // n_moas) % 10
    width = len(str(n_obs - 1))
    obs = pd.DataFrame({"moa": [f"MoA{m:02d}" for m in moa],
                        "pert_id": [f"C{c:03d}" for c in cpd],
                        "split": np.where(group == 0, "val",
                                          np.where(group == 1, "test", "train"))},
                       index=[f"S{i:0{width}d}" for i in range(n_obs)])
    var = pd.DataFrame(index=[str(10_000 + j) for j in range(n_vars)])
    ad.AnnData(obs=obs, var=var).write_h5ad(path)
    centroids = centroid_scale * rng.standard_normal((n_moas, n_vars)).astype(np.float32)
    noise = rng.standard_normal((block, n_vars), dtype=np.float32)
    with h5py.File(path, "a") as f:
        if "X" in f:
            del f["X"]
        x = f.create_dataset("X", (n_obs, n_vars), dtype="f4")
        x.attrs["encoding-type"] = "array"
        x.attrs["encoding-version"] = "0.2.0"
        for start in range(0, n_obs, block):
            stop = min(n_obs, start + block)
            x[start:stop] = centroids[moa[start:stop]] + noise[rng.permutation(block)[
                :stop - start]]


def proc_status_bytes(key: str) -> int:
    """Bytes of a /proc/self/status field (VmSize, VmPeak, VmRSS, VmHWM); 0 if absent."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def warm_up_training() -> None:
    """A tiny in-memory training, so that lazy imports, thread pools and Lightning's
    one-off allocations belong to a memory baseline taken afterwards, not to the
    headroom measured against it (memory-limit test and benchmark)."""
    from moaspace.model import MoaModel

    n = 64
    obs = pd.DataFrame({"moa": np.arange(n) % 2, "pert_id": np.arange(n) % 8,
                        "split": np.where(np.arange(n) % 8 == 0, "val", "train")},
                       index=[f"w{i}" for i in range(n)]).astype(str)
    warm = ad.AnnData(np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32),
                      obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(8)]))
    MoaModel(warm, hidden_dims=(8,), embedding_dim=4).train(
        max_epochs=1, batch_size=16, progress_bar=False, accelerator="cpu")
