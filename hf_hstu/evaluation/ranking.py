"""Full-corpus ranking evaluation: each user's held-out target ranked against every item, and the top items listed,
seen items removed; the metrics computed by the package's `evaluate` module."""

from collections.abc import Sequence

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..modeling.modeling_recommender import SequentialRecommenderPreTrainedModel
from ..modeling.retrieval import target_ranks, top_k_items
from ..progress import PhaseProgress, quiet_library_progress_bars
from .beyond_accuracy import LIST_METRICS, ItemPopularity
from .ranking_metrics import DEFAULT_K_VALUES, check_metric_names, load_ranking_metric


@torch.no_grad()
def evaluate_ranking(
    model: SequentialRecommenderPreTrainedModel,
    dataloader: DataLoader,
    accelerator: Accelerator | None = None,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    progress: str | None = None,
    *,
    item_popularity: ItemPopularity | None = None,
    item_features: torch.Tensor | None = None,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """The metrics of the package's `evaluate` module (`load_ranking_metric`, configuration "full_ranking") on the
    targets of `dataloader` (batches from `SequenceCollator` with `target_ids` and `target_timestamps`).

    Each user's target is ranked against every item (HR, Recall, NDCG, MRR at each K, and MRR), and the top max(K)
    items are listed for the beyond-accuracy metrics: catalogue coverage and the share of full lists always, ARP,
    novelty and serendipity with the training `item_popularity`, intra-list diversity with `item_features`
    ((num_items + 1, F), nonzero = the item has the feature). `metrics` selects among them (see
    `recommendation_metrics`); without list metrics the lists are not computed. Every item of a user's history except
    the target itself is removed from both. With an `accelerator` the dataloader is sharded across processes and the
    ranks and lists gathered (duplicates of uneven shards dropped), so the result equals a single-process run exactly.
    With `progress`, a description such as "validation", the batches are shown as a bar on a terminal and as one line
    at the end elsewhere (on the local main process only).
    """
    check_metric_names(metrics, item_popularity is not None, item_features is not None, has_catalogue=True)
    model = accelerator.unwrap_model(model) if accelerator is not None else model
    num_items = model.config.num_items
    wants_lists = metrics is None or any(name in LIST_METRICS for name in metrics)
    list_length = max(k_values) if wants_lists else 0
    metric = load_ranking_metric(config_name="full_ranking", keep_in_memory=True)
    item_table = model.item_table()
    shown = progress is not None and (accelerator is None or accelerator.is_local_main_process)
    batches = PhaseProgress(dataloader, desc=progress or "", disable=not shown)
    for batch in batches:
        user_embeddings = model.embed_users(
            batch["input_ids"],
            batch["attention_mask"],
            batch["timestamps"],
            batch["target_timestamps"],
            batch.get("ratings") if model.requires_ratings else None,
        )
        history = batch["input_ids"] * (batch["attention_mask"] != 0)
        target_ids = batch["target_ids"]
        ranks = target_ranks(user_embeddings, item_table, model.similarity, target_ids, history)
        lists = target_ids.new_zeros(target_ids.shape[0], list_length)  # (B, L), 0 = nothing left to list
        if list_length:
            listed, _ = top_k_items(
                user_embeddings, item_table, model.similarity, min(list_length, num_items), history, pad_missing=True
            )
            lists[:, : listed.shape[1]] = listed
        if accelerator is not None:
            ranks, lists, target_ids = accelerator.gather_for_metrics((ranks, lists, target_ids))
        metric.add_batch(predictions=lists.tolist(), references=target_ids.tolist(), ranks=ranks.tolist())
    batches.close()
    return metric.compute(
        k_values=list(k_values),
        num_items=num_items,
        item_popularity=item_popularity,
        item_features=item_features,
        metrics=metrics,
    )


def evaluate_checkpoint(
    model_name_or_path: str,
    dataset: str,
    split: str = "test",
    batch_size: int = 256,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """Load a saved (or Hub) checkpoint and evaluate it on one split of a preprocessed dataset folder, on the CPU
    (`attn_implementation`: the attention backend; unset, each forward pass picks it from the device). The item
    popularity of the dataset's train split feeds ARP, novelty and serendipity; `metrics` as `evaluate_ranking`."""
    from transformers import AutoModel

    from ..training.arguments import DataArguments
    from ..training.data import load_training_data

    with quiet_library_progress_bars():
        model = AutoModel.from_pretrained(
            model_name_or_path,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
        data = load_training_data(DataArguments(dataset=dataset), model.config.max_seq_len)
    if split not in data.splits or split == "train":
        raise ValueError(f"{dataset}: no evaluation split '{split}'; it has {sorted(data.splits)}.")
    if data.vocabulary.num_items != model.config.num_items:
        raise ValueError(
            f"{model_name_or_path} ranks {model.config.num_items} items but {dataset} has "
            f"{data.vocabulary.num_items}: the checkpoint was not trained on this dataset."
        )
    loader = DataLoader(data.splits[split], batch_size=batch_size, collate_fn=data.collator)
    return evaluate_ranking(
        model, loader, k_values=k_values, progress=split, item_popularity=data.item_popularity(), metrics=metrics
    )
