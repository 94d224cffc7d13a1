"""Readers and writers for LINCS files, query matrices, MoA tables and gene sets."""

from moaspace.io.gctx import read_gctx, read_gctx_meta, write_gctx
from moaspace.io.genesets import bundled_gmt, read_gmt
from moaspace.io.labels import read_moa_table
from moaspace.io.lincs import (
    compound_targets,
    landmark_gene_ids,
    read_compoundinfo,
    read_geneinfo,
    read_siginfo,
)
from moaspace.io.query import query_from_matrix, read_query

__all__ = [
    "bundled_gmt",
    "compound_targets",
    "landmark_gene_ids",
    "query_from_matrix",
    "read_compoundinfo",
    "read_gctx",
    "read_gctx_meta",
    "read_geneinfo",
    "read_gmt",
    "read_moa_table",
    "read_query",
    "read_siginfo",
    "write_gctx",
]
