"""Tiny configurations and batches shared by the model tests."""

import torch

from hf_hstu import HSTUConfig, HSTUModel, SASRecConfig, SASRecModel

NUM_ITEMS = 30
# Model variants of the equivalence tests (cached and last-token paths against the full forward pass): every relative
# bias on and off, both input preprocessors that change the tokens, the layer-norm output and a mixture of logits.
VARIANTS = {
    "hstu": ("hstu", {}),
    "hstu-position-bias-only": ("hstu", {"use_time_bias": False}),
    "hstu-time-bias-only": ("hstu", {"use_position_bias": False}),
    "hstu-no-bias": ("hstu", {"use_position_bias": False, "use_time_bias": False}),
    "hstu-combined-item-rating": ("hstu", {"input_preprocessor": "combined_item_rating"}),
    "hstu-rated-layer-norm-mol": (
        "hstu",
        {"input_preprocessor": "rated", "output_postprocessor": "layer_norm", "similarity": "mol"},
    ),
    "sasrec": ("sasrec", {}),
    "sasrec-combined-item-rating": ("sasrec", {"input_preprocessor": "combined_item_rating"}),
}


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


# Command-line arguments of a tiny, fast training run (add --dataset and --output_dir).
TINY_TRAINING_ARGUMENTS = (
    "--hidden_size 16 --num_hidden_layers 1 --num_attention_heads 1 --attention_dim 8 --linear_dim 8 "
    "--max_seq_len 20 --num_negatives 16 --batch_size 16 --eval_batch_size 32 --report_to none --seed 0"
).split()


def save_tiny_dataset(path, num_users: int = 48):
    """A saved synthetic dataset of `num_users` users and 40 items; returns its folder."""
    from hf_hstu.data import build_sequences, make_synthetic_interactions

    interactions = make_synthetic_interactions(
        num_users=num_users, num_items=40, num_clusters=4, min_length=6, max_length=24, seed=0
    )
    return build_sequences(interactions, dataset_name="tiny").save(path)


# A script that loads a checkpoint (folder or Hub repo) in a fresh process and writes the user embeddings and top-5
# recommendations of a batch. With mode "hidden", hf_hstu and triton cannot be imported, so the model must come from
# the checkpoint's own code (trust_remote_code). HF_HSTU_TEST_SIMULATE_CUDA=1 makes torch report a GPU.
LOADER = """
import importlib.abc, json, os, sys
import torch

source, mode, inputs_file, outputs_file = sys.argv[1:5]
if os.environ.get("HF_HSTU_TEST_SIMULATE_CUDA") == "1":  # a machine with a GPU, the model on the CPU
    torch.cuda.is_available = lambda: True
if mode == "hidden":
    class Hidden(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("hf_hstu", "triton"):
                raise ImportError(f"{name} is hidden in this test")
            return None

    sys.meta_path.insert(0, Hidden())
    sys.path = [p for p in sys.path if p not in ("", ".")]
else:
    import hf_hstu  # registers the models with the Auto classes
from transformers import AutoModel

model = AutoModel.from_pretrained(source, trust_remote_code=mode == "hidden")
expected_module = "transformers_modules" if mode == "hidden" else "hf_hstu"
assert type(model).__module__.startswith(expected_module), type(model).__module__
assert mode != "hidden" or "hf_hstu" not in sys.modules
batch = {key: torch.tensor(value) for key, value in json.load(open(inputs_file)).items()}
recommendations = model.recommend(**batch, k=5)
json.dump({"user_embeddings": model.embed_users(**batch).tolist(), "item_ids": recommendations.item_ids.tolist(),
           "scores": recommendations.scores.tolist()}, open(outputs_file, "w"))
"""


def load_in_fresh_process(tmp_path, source: str, mode: str, inputs: dict[str, torch.Tensor], env: dict) -> dict:
    """Run LOADER on `source` in a subprocess ("installed" or "hidden" package) and return what it wrote."""
    import json
    import subprocess
    import sys

    inputs_file, outputs_file = tmp_path / "inputs.json", tmp_path / f"outputs_{mode}.json"
    inputs_file.write_text(json.dumps({key: value.tolist() for key, value in inputs.items()}))
    (tmp_path / "loader.py").write_text(LOADER)
    result = subprocess.run(
        [sys.executable, str(tmp_path / "loader.py"), source, mode, str(inputs_file), str(outputs_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(outputs_file.read_text())
