"""Evaluation: accuracy (HR, Recall, NDCG, MRR) and beyond-accuracy metrics (coverage, full lists, ARP, novelty,
serendipity, intra-list diversity), one implementation also served as an `evaluate` module, and full-corpus ranking
of held-out targets."""

from .beyond_accuracy import LIST_METRICS, ItemPopularity, ListMetricsAccumulator
from .ranking_metrics import (
    ACCURACY_METRICS,
    DEFAULT_K_VALUES,
    RankingMetricsAccumulator,
    load_ranking_metric,
    recommendation_metrics,
)

__all__ = [
    "ACCURACY_METRICS",
    "DEFAULT_K_VALUES",
    "LIST_METRICS",
    "ItemPopularity",
    "ListMetricsAccumulator",
    "RankingMetricsAccumulator",
    "load_ranking_metric",
    "recommendation_metrics",
]
