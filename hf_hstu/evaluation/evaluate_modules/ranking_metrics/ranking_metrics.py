"""`evaluate` metric: HR@K, NDCG@K and MRR@K of recommended item lists against one target item per user.

The numbers come from `hf_hstu.evaluation.ranking_metrics`, the functions the hf_hstu training loop evaluates with.
"""

import datasets
import evaluate

from hf_hstu.evaluation.ranking_metrics import DEFAULT_K_VALUES, metrics_from_top_k

_DESCRIPTION = """
Ranking metrics for next-item recommendation with one relevant (target) item per user. Each prediction is the list
of recommended item ids, best first; its reference is the target item id. With r the 1-based position of the target
in the list: HR@K (= Recall@K with one target) is 1 if r <= K, NDCG@K is 1/log2(r + 1) if r <= K, MRR@K is 1/r if
r <= K, and 0 otherwise (also when the list misses the target); each averaged over users.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): recommended item ids per user, best first, all lists of the same length L.
    references (`list` of `int`): the target item id (>= 1) of each user.
    k_values (`list` of `int`, *optional*, defaults to (10, 50, 200)): the cutoffs K, each at most L.
Returns:
    `dict` with "hr@K", "ndcg@K" and "mrr@K" for each K, as floats.
Example:
    >>> metric = evaluate.load("hf_hstu/evaluation/evaluate_modules/ranking_metrics")
    >>> metric.compute(predictions=[[3, 1, 2], [4, 5, 6]], references=[3, 6], k_values=[1, 3])
    {'hr@1': 0.5, 'hr@3': 1.0, 'ndcg@1': 0.5, 'ndcg@3': 0.75, 'mrr@1': 0.5, 'mrr@3': 0.6666666666666666}
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


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RankingMetrics(evaluate.Metric):
    """HR@K, NDCG@K and MRR@K of ranked recommendation lists."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.List(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://arxiv.org/abs/2402.17152"],
        )

    def _compute(self, predictions, references, k_values=DEFAULT_K_VALUES) -> dict[str, float]:
        lengths = {len(items) for items in predictions}
        if len(lengths) > 1:
            raise ValueError(f"Every prediction must list the same number of items, got lengths {sorted(lengths)}")
        return metrics_from_top_k(predictions, references, k_values)
