"""The training data order: the same on every process and after a resume (also in the middle of an epoch)."""

import torch
from torch.utils.data import Sampler


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
