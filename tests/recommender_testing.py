"""Tiny configurations and batches shared by the model tests."""

import torch

from hf_hstu import HSTUConfig, HSTUModel, SASRecConfig, SASRecModel

NUM_ITEMS = 30


def tiny_config(model_type: str = "hstu", **overrides):
    """A small, dropout-free configuration of either model."""
    common = dict(num_items=NUM_ITEMS, max_seq_len=8, hidden_size=16, input_dropout=0.0, num_negatives=8)
    if model_type == "hstu":
        defaults = dict(num_hidden_layers=2, num_attention_heads=2, attention_dim=4, linear_dim=6, linear_dropout=0.0)
        return HSTUConfig(**{**common, **defaults, **overrides})
    defaults = dict(num_hidden_layers=2, num_attention_heads=2, attention_dropout=0.0, hidden_dropout=0.0)
    return SASRecConfig(**{**common, **defaults, **overrides})


def tiny_model(model_type: str = "hstu", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model_class = HSTUModel if model_type == "hstu" else SASRecModel
    return model_class(tiny_config(model_type, **overrides))


def right_padded_batch(seed: int = 0, lengths=(5, 3, 8, 1)) -> dict[str, torch.Tensor]:
    """Random histories of the given lengths, right-padded, with increasing timestamps and ratings."""
    generator = torch.Generator().manual_seed(seed)
    batch_size, width = len(lengths), max(lengths)
    input_ids = torch.randint(1, NUM_ITEMS + 1, (batch_size, width), generator=generator)
    gaps = torch.randint(1, 100_000, (batch_size, width), generator=generator)
    timestamps = 1_600_000_000 + gaps.cumsum(1)
    ratings = torch.randint(1, 6, (batch_size, width), generator=generator)
    attention_mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return {
        "input_ids": input_ids * attention_mask,
        "attention_mask": attention_mask.long(),
        "timestamps": timestamps * attention_mask,
        "ratings": ratings * attention_mask,
        "target_timestamps": timestamps.max(1).values + 500,
    }


def to_left_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same histories with their padding moved to the left."""
    lengths = batch["attention_mask"].sum(1)
    width = batch["input_ids"].shape[1]
    shifted = {}
    for name, tensor in batch.items():
        if tensor.dim() != 2:
            shifted[name] = tensor
            continue
        rows = [torch.cat([row.new_zeros(width - n), row[:n]]) for row, n in zip(tensor, lengths.tolist(), strict=True)]
        shifted[name] = torch.stack(rows)
    return shifted
