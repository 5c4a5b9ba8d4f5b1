"""Samplers of the training loop that keep runs reproducible across processes and resumptions."""

import torch
from accelerate import Accelerator
from torch.utils.data import Sampler

from ..modeling.losses import sample_negatives


class EpochSeededSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch): the same order on every process and after a resume."""

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


class GlobalNegativeSampler:
    """Uniform negatives drawn for the whole global batch from one generator in step on every process; each process
    keeps its own rows. Training on N processes then sees exactly the negatives of a single-process run."""

    def __init__(self, num_items: int, num_negatives: int, seed: int) -> None:
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, attention_mask: torch.Tensor, accelerator: Accelerator | None = None) -> torch.Tensor:
        """(local supervised positions, R) negatives for a right-padded local batch (of a single process when
        `accelerator` is None)."""
        local_count = (attention_mask.sum(1) - 1).clamp(min=0).sum().reshape(1)
        if accelerator is None:
            counts, offset = local_count, 0
        else:
            counts = accelerator.gather(local_count.to(accelerator.device)).cpu()
            offset = int(counts[: accelerator.process_index].sum())
        placeholder = torch.empty(int(counts.sum()), dtype=torch.long)
        negatives = sample_negatives(placeholder, self.num_negatives, self.num_items, "uniform", self.generator)
        return negatives[offset : offset + int(local_count)].to(attention_mask.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
