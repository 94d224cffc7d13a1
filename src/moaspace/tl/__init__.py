"""Tools on a trained model (scanpy's ``tl``): MoA calls, evaluation, explanations and
CRISPR knockdown scoring. AnnData in; results in ``obsm``/``obs``/``uns``."""

from moaspace.model._predict import predict, prediction_table
from moaspace.tl._attribution import gene_importance, moa_directions, top_genes
from moaspace.tl._crispr import expected_moas, score_knockdowns, write_crispr
from moaspace.tl._enrichment import enrich_moas, prerank, restrict_gene_sets
from moaspace.tl._evaluate import evaluate, metrics_markdown, write_metrics
from moaspace.tl._explain import explain
from moaspace.tl._metrics import classification_metrics, retrieval_map, top_k_accuracy

__all__ = [
    "classification_metrics",
    "enrich_moas",
    "evaluate",
    "expected_moas",
    "explain",
    "gene_importance",
    "metrics_markdown",
    "moa_directions",
    "predict",
    "prediction_table",
    "prerank",
    "restrict_gene_sets",
    "retrieval_map",
    "score_knockdowns",
    "top_genes",
    "top_k_accuracy",
    "write_crispr",
    "write_metrics",
]
