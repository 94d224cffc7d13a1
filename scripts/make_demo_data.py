"""Regenerate the embedded demo release in src/moaspace/resources/demo/.

    .venv/bin/python scripts/make_demo_data.py [--out DIR] [--check]

Deterministic: the same moaspace version writes byte-identical files (the
configuration is ``moaspace.datasets._simulate.DEMO_CONFIG``). ``--check`` runs the
default ``prepare`` filters on the result and prints the counts, the file sizes
and the raw-cosine kNN accuracy on unseen compounds.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from moaspace.datasets._simulate import DEMO_CONFIG, raw_knn_difficulty, simulate
from moaspace.pp import prepare

DEMO_DIR = Path(__file__).resolve().parents[1] / "src" / "moaspace" / "resources" / "demo"
MAX_BYTES = 6 * 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR)
    parser.add_argument("--check", action="store_true", help="run prepare + kNN and report")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("make_demo_data")
    paths = simulate(args.out, DEMO_CONFIG)
    total = 0
    for key, path in paths.items():
        size = path.stat().st_size
        total += size
        log.info("%-12s %-26s %9.1f kB", key, path.name, size / 1024)
    log.info("total %.2f MB", total / 2**20)
    if total > MAX_BYTES:
        raise SystemExit(f"demo data is {total / 2**20:.2f} MB, over the {MAX_BYTES >> 20} MB cap")
    if args.check:
        keys = ("gctx", "siginfo", "geneinfo", "compoundinfo", "moa_labels")
        adata = prepare(**{k: paths[k] for k in keys}, progress=False)
        log.info(
            "after default filters: %d signatures, %d compounds, %d MoAs, %d cell lines",
            adata.n_obs,
            adata.obs["pert_id"].nunique(),
            adata.obs["moa"].nunique(),
            adata.obs["cell_iname"].nunique(),
        )
        result = raw_knn_difficulty(adata)
        log.info(
            "raw cosine kNN (k=10) on unseen compounds: accuracy %.3f, macro-F1 %.3f",
            result["accuracy"],
            result["macro_f1"],
        )


if __name__ == "__main__":
    main()
