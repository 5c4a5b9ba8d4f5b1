"""Ranking evaluation: HR / NDCG / MRR (one implementation, also served as an `evaluate` module) and full-corpus
ranking of held-out targets."""

from .ranking_metrics import DEFAULT_K_VALUES, RankingMetricsAccumulator, load_ranking_metric

__all__ = ["DEFAULT_K_VALUES", "RankingMetricsAccumulator", "load_ranking_metric"]
