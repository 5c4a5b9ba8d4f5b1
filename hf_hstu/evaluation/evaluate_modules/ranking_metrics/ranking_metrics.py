"""`evaluate` metric: accuracy (HR, Recall, NDCG, MRR at K) and beyond-accuracy metrics (catalogue coverage, full-list
share, average recommendation popularity, novelty, serendipity, intra-list diversity) of recommended item lists
against one target item per user.

The numbers come from `hf_hstu.evaluation.ranking_metrics.recommendation_metrics`, the function the hf_hstu training
loop and `scripts/evaluate.py` evaluate with (through this module).
"""

import datasets
import evaluate

from hf_hstu.evaluation.ranking_metrics import DEFAULT_K_VALUES, recommendation_metrics

_DESCRIPTION = """
Metrics of next-item recommendation with one relevant (target) item per user. Each prediction is the list of
recommended item ids, best first (0-padded at the end when fewer items were recommended); its reference is the target
item id. With r the 1-based position of the target: HR@K = Recall@K (one target) is 1 if r <= K, NDCG@K is
1/log2(r + 1) if r <= K, MRR@K is 1/r if r <= K, and 0 otherwise; each averaged over users. The configuration
"full_ranking" also takes `ranks`, the target's rank over the whole catalogue: the accuracy metrics then come from it,
with MRR without cutoff. Beyond accuracy, as RecTools defines them: coverage@K (distinct items recommended in the top K
/ catalogue size), full_list_share@K (users with at least K items), arp@K (mean training interactions of the top K),
novelty@K (mean -log2(training users of the item / training users), RecTools' MeanInvUserFreq), serendipity@K
(RecTools' Serendipity: relevant and less popular than its position), ild@K (mean Jaccard distance of the item
feature sets over the pairs of the top K).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): recommended item ids per user, best first, all lists of the same length L
        (pad with 0 at the end).
    references (`list` of `int`): the target item id (>= 1) of each user.
    ranks (`list` of `int`, configuration "full_ranking" only): the 1-based rank of each target over the catalogue.
    k_values (`list` of `int`, *optional*, defaults to (10, 50, 100, 200)): the cutoffs K, each at most L (without
        ranks).
    num_items (`int`, *optional*): the catalogue size, for coverage and serendipity.
    item_popularity (*optional*): training popularity for arp, novelty and serendipity: an
        `hf_hstu.evaluation.beyond_accuracy.ItemPopularity`, or a dict with "interactions" and "users" (lists indexed
        by item id, index 0 padding) and "num_users".
    item_features (*optional*): (num_items + 1, F) table, nonzero where the item has the feature, for ild.
    metrics (`list` of `str`, *optional*): among hr, recall, ndcg, mrr, coverage, full_list_share, arp, novelty,
        serendipity, ild; unset: every metric whose inputs are given. Asking for one without its input is an error.
Returns:
    `dict` of floats: "hr@K", "recall@K", "ndcg@K", "mrr@K" (and "mrr" with ranks), then "coverage@K",
    "full_list_share@K", "arp@K", "novelty@K", "serendipity@K", "ild@K" as their inputs allow.
Example:
    >>> metric = evaluate.load("hf_hstu/evaluation/evaluate_modules/ranking_metrics")
    >>> metric.compute(predictions=[[3, 1, 2], [4, 5, 6]], references=[3, 6], k_values=[1, 3], num_items=6)
    {'hr@1': 0.5, 'hr@3': 1.0, 'recall@1': 0.5, 'recall@3': 1.0, 'ndcg@1': 0.5, 'ndcg@3': 0.75, 'mrr@1': 0.5, \
'mrr@3': 0.6666666666666666, 'coverage@1': 0.3333333333333333, 'coverage@3': 1.0, 'full_list_share@1': 1.0, \
'full_list_share@3': 1.0}
"""

_CITATION = """
@inproceedings{zhai2024actions,
  title={Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for Generative Recommendations},
  author={Zhai, Jiaqi and Liao, Lucy and Liu, Xing and Wang, Yueming and Li, Rui and Cao, Xuan and Gao, Leon and
          Gong, Zhaojie and Gu, Fangda and He, Michael and Lu, Yinghai and Shi, Yu},
  booktitle={International Conference on Machine Learning (ICML)},
  year={2024}
}
"""

_FEATURES = {"predictions": datasets.List(datasets.Value("int64")), "references": datasets.Value("int64")}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RankingMetrics(evaluate.Metric):
    """Accuracy and beyond-accuracy metrics of ranked recommendation lists."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in ("default", "full_ranking"):
            raise ValueError(f"Unknown configuration '{self.config_name}': use 'default' or 'full_ranking'")
        ranks = {"ranks": datasets.Value("int64")} if self.config_name == "full_ranking" else {}
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({**_FEATURES, **ranks}),
            reference_urls=["https://arxiv.org/abs/2402.17152", "https://rectools.readthedocs.io"],
        )

    def _compute(
        self,
        predictions,
        references,
        ranks=None,
        k_values=DEFAULT_K_VALUES,
        num_items=None,
        item_popularity=None,
        item_features=None,
        metrics=None,
    ) -> dict[str, float]:
        lengths = {len(items) for items in predictions}
        if len(lengths) > 1:
            raise ValueError(f"Every prediction must list the same number of items, got lengths {sorted(lengths)}")
        return recommendation_metrics(
            predictions,
            references,
            k_values,
            target_ranks=ranks,
            num_items=num_items,
            item_popularity=item_popularity,
            item_features=item_features,
            metrics=metrics,
        )
