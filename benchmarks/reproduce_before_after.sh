#!/usr/bin/env bash
# Rerun one benchmark with a given source tree, to show a code move changes no number:
#   bash benchmarks/reproduce_before_after.sh OUT_DIR SRC_DIR
# SRC_DIR is the src/ of the checkout under test (e.g. a `git worktree` of the commit
# before the move, then this checkout's src/); compare OUT_DIR/bench/results.json of both.
set -euo pipefail
OUT=$1; SRC=$2
export PYTHONPATH=$SRC
M="${PYTHON:-.venv/bin/python} -m moaspace.cli"
rm -rf $OUT; mkdir -p $OUT
$M simulate --out $OUT/world --seed 0 --n-compounds 300 --n-cells 4
$M prepare --gctx $OUT/world/level5_beta_trt_cp.gctx --siginfo $OUT/world/siginfo_beta.txt --geneinfo $OUT/world/geneinfo_beta.txt --compoundinfo $OUT/world/compoundinfo_beta.txt --moa-labels $OUT/world/moa_labels.csv --min-compounds-per-moa 3 --out $OUT/data.h5ad
$M benchmark $OUT/data.h5ad --out $OUT/bench --scheme compound --seeds 0,1 --max-epochs 6 --methods moaspace,arcface_moa_only,lda,logreg,raw_knn,pca_lda
