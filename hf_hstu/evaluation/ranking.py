"""Full-corpus ranking evaluation: each user's held-out target ranked against every item, seen items removed."""

from collections.abc import Sequence

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..modeling.modeling_recommender import SequentialRecommenderPreTrainedModel
from ..modeling.retrieval import target_ranks
from ..progress import PhaseProgress, quiet_library_progress_bars
from .ranking_metrics import DEFAULT_K_VALUES, RankingMetricsAccumulator


@torch.no_grad()
def evaluate_ranking(
    model: SequentialRecommenderPreTrainedModel,
    dataloader: DataLoader,
    accelerator: Accelerator | None = None,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    progress: str | None = None,
) -> dict[str, float]:
    """HR@K, NDCG@K, MRR@K and MRR of the targets of `dataloader` (batches from `SequenceCollator` with
    `target_ids` and `target_timestamps`).

    Every item of a user's history except the target itself is removed from the ranking. With an `accelerator`
    the dataloader is sharded across processes and the ranks gathered (duplicates of uneven shards dropped), so the
    result equals a single-process run exactly. With `progress`, a description such as "validation", the batches are
    shown as a bar on a terminal and as one line at the end elsewhere (on the local main process only).
    """
    model = accelerator.unwrap_model(model) if accelerator is not None else model
    accumulator = RankingMetricsAccumulator(max_rank=model.config.num_items, k_values=k_values)
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
        ranks = target_ranks(user_embeddings, item_table, model.similarity, batch["target_ids"], history)
        if accelerator is not None:
            ranks = accelerator.gather_for_metrics(ranks)
        accumulator.update(ranks)
    batches.close()
    return accumulator.compute()


def evaluate_checkpoint(
    model_name_or_path: str,
    dataset: str,
    split: str = "test",
    batch_size: int = 256,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> dict[str, float]:
    """Load a saved (or Hub) checkpoint and rank the targets of one split of a preprocessed dataset folder, on the
    CPU (`attn_implementation`: the attention backend; unset, each forward pass picks it from the device)."""
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
    return evaluate_ranking(model, loader, k_values=k_values, progress=split)
