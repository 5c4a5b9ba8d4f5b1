"""The training objective of one step, in one place for the training loop and `scripts/bench_train.py`: which
negatives each supervised position is scored against, and the loss weighted so that N processes train as one.

The rules themselves live with the model (`hf_hstu.modeling.losses`): how many negatives a loss takes
(`negatives_per_position`: one for BCE) and which positions are supervised (`supervised_positions`); in-batch
negatives are drawn by the model from the distinct positives of each process's batch.
"""

import pyarrow.compute as pc
import torch
from accelerate import Accelerator
from datasets import Dataset

from ..modeling.configuration_recommender import SequentialRecommenderConfig
from ..modeling.losses import negatives_per_position, sample_negatives, supervised_positions

NEGATIVES_FROM = ("catalogue", "train")


class GlobalNegativeSampler:
    """Uniform negatives drawn for the whole global batch from one generator in step on every process; each process
    keeps its own rows. Training on N processes then sees exactly the negatives of a single-process run.

    Negatives come from 1..num_items, or from `item_ids` (e.g. the ids seen in training) when given.
    """

    def __init__(self, num_items: int, num_negatives: int, seed: int, item_ids: torch.Tensor | None = None) -> None:
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.item_ids = item_ids  # (C,) allowed negative ids, or None for the whole catalogue
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, local_count: int, accelerator: Accelerator | None = None) -> torch.Tensor:
        """(local_count, R) negatives for this process's supervised positions (of a single process when
        `accelerator` is None)."""
        counts, offset = torch.tensor([local_count]), 0
        if accelerator is not None and accelerator.num_processes > 1:
            counts = accelerator.gather(counts.to(accelerator.device)).cpu()
            offset = int(counts[: accelerator.process_index].sum())
        pool = self.num_items if self.item_ids is None else self.item_ids.shape[0]
        placeholder = torch.empty(int(counts.sum()), dtype=torch.long)
        negatives = sample_negatives(placeholder, self.num_negatives, pool, "uniform", self.generator)
        negatives = negatives[offset : offset + local_count]
        return negatives if self.item_ids is None else self.item_ids[negatives - 1]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def train_item_ids(sequences: Dataset) -> torch.Tensor:
    """The sorted distinct item ids of a training split (rows with `item_ids`), read column-wise from Arrow."""
    distinct = pc.unique(pc.list_flatten(sequences.with_format("arrow")["item_ids"]))
    return torch.from_numpy(distinct.to_numpy().astype("int64")).sort().values


class TrainingObjective:
    """Negatives and loss of a training step for `model` built from `config`.

    Args:
        config: the model's config (its loss, negative sampling and number of negatives).
        seed: seed of the uniform negatives' generator (saved in checkpoints through `state_dict`).
        item_ids: the ids uniform negatives are drawn from (default: every id of the item table, 1..num_items).
    """

    def __init__(self, config: SequentialRecommenderConfig, seed: int, item_ids: torch.Tensor | None = None) -> None:
        self.sampler = None
        if config.negative_sampling == "uniform":  # in-batch negatives are drawn by the model on each process
            self.sampler = GlobalNegativeSampler(config.num_items, negatives_per_position(config), seed, item_ids)

    def loss(
        self, model, batch: dict[str, torch.Tensor], accelerator: Accelerator | None = None
    ) -> tuple[torch.Tensor, float]:
        """(the loss to back-propagate, this process's mean loss as a number) of a right-padded batch.

        On N processes the loss is scaled so that DDP's gradient average equals the gradient of the mean over all
        supervised positions of the global batch (processes may hold different numbers of positions)."""
        local_count = int(supervised_positions(batch["attention_mask"]).sum())
        negative_ids = None
        if self.sampler is not None:
            negative_ids = self.sampler.sample(local_count, accelerator).to(batch["input_ids"].device)
        loss = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            timestamps=batch.get("timestamps"),
            labels=batch.get("labels", batch["input_ids"]),
            ratings=batch.get("ratings"),
            negative_ids=negative_ids,
        ).loss
        value = float(loss.detach())
        if accelerator is not None and accelerator.num_processes > 1:
            local = torch.tensor([float(local_count)], device=accelerator.device)
            total = accelerator.reduce(local.clone(), reduction="sum").clamp(min=1)
            loss = loss * (local * accelerator.num_processes / total).squeeze(0)
        return loss, value

    def state_dict(self) -> dict:
        return self.sampler.state_dict() if self.sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.sampler is not None:
            self.sampler.load_state_dict(state)
