"""Export of the user encoder (history -> user embedding) with `torch.export` and to ONNX, with the item table.

The model's own entry points (`forward`, `embed_users`) check their inputs with data-dependent Python (empty rows,
gaps, id ranges, left or right padding, truncation to `max_seq_len`): fine in eager mode, not in a traced graph.
:class:`UserEncoder` is the traceable path: right-padded histories of at most `max_seq_len` events and their lengths,
through the model's own pieces (`_encode_events`: item embeddings, input preprocessor, `encode`, output
postprocessor), to the embedding of each history's last event. :func:`encoder_inputs` prepares such inputs on the
host from lists of item ids (truncation included), and :func:`export_user_encoder` writes, into one folder:

- ``user_encoder.pt2``: the `torch.export` program (`torch.export.load(...).module()(**inputs)`), dynamic in batch
  size and history length;
- ``user_encoder.onnx``: the same graph through torch's dynamo ONNX exporter (inputs named as in
  ``export_config.json``), for onnxruntime;
- ``item_table.safetensors``: tensor ``item_table`` (num_items + 1, D), the item representations users are scored
  against (row 0 is padding): ``scores = user_embeddings @ item_table.T``;
- ``export_config.json``: input names, dtypes and the limits below; ``item_vocabulary.json`` when the checkpoint has
  one (raw item id of row i is ``raw_ids[i - 1]``).

Limits: the graph is the eager PyTorch attention (the Triton kernels are not exportable; the eager reference
computes the same function), fp32 as exported; histories longer than `max_seq_len` must be truncated to their most
recent events before the call (:func:`encoder_inputs` does it); only the dot-product similarity is exported
(the mixture-of-logits similarity scores with learned gates that are not part of this graph).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.vocabulary import ItemVocabulary
from ..modeling.modeling_recommender import EventBatch, SequentialRecommenderPreTrainedModel, _last_states

ENCODER_PROGRAM_FILE = "user_encoder.pt2"
ENCODER_ONNX_FILE = "user_encoder.onnx"
ITEM_TABLE_FILE = "item_table.safetensors"
EXPORT_CONFIG_FILE = "export_config.json"
ITEM_TABLE_KEY = "item_table"


class UserEncoder(nn.Module):
    """The traceable user encoder of a recommender: right-padded histories -> (B, D) user embeddings.

    Inputs (int64), in the order of `input_names` (which depends on the model: `timestamps` and
    `target_timestamps` only for models with a time bias, `ratings` only for rated input preprocessors):

    - input_ids (B, N): item ids 1..num_items, oldest first, right-padded, N <= max_seq_len;
    - lengths (B,): the real events of each row, 1..N (positions from `lengths` on are ignored);
    - timestamps (B, N): unix seconds of each event;
    - target_timestamps (B,): the request time of each row;
    - ratings (B, N): ratings 1..num_ratings.

    Equal to `model.embed_users` on the same histories (up to float rounding). Sets the model's attention to the
    eager reference, the one that exports.
    """

    def __init__(self, model: SequentialRecommenderPreTrainedModel) -> None:
        super().__init__()
        if model.config._attn_implementation != "eager":
            model.set_attn_implementation("eager")
        self.model = model
        names = ["input_ids", "lengths"]
        if model.requires_timestamps:
            names += ["timestamps", "target_timestamps"]
        if model.requires_ratings:
            names.append("ratings")
        self.input_names: tuple[str, ...] = tuple(names)

    def forward(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        target_timestamps: torch.Tensor | None = None,
        ratings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        width = input_ids.shape[1]
        mask = torch.arange(width, device=input_ids.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, N)
        batch = EventBatch(
            input_ids=input_ids * mask,
            attention_mask=mask,
            timestamps=torch.zeros_like(input_ids) if timestamps is None else timestamps * mask,
            ratings=None if ratings is None else ratings * mask,
            labels=None,
            target_timestamps=target_timestamps,
            lengths=lengths,
            source_positions=None,
            input_length=width,
        )
        return _last_states(self.model._encode_events(batch), lengths)

    def dynamic_shapes(self) -> dict[str, dict[int, torch.export.Dim]]:
        """Batch size and history length (1..max_seq_len) dynamic, for every input."""
        batch = torch.export.Dim("batch", min=1)
        length = torch.export.Dim("length", min=1, max=self.model.config.max_seq_len)
        per_event = {0: batch, 1: length}
        shapes = {"input_ids": per_event, "lengths": {0: batch}, "timestamps": per_event}
        shapes.update(target_timestamps={0: batch}, ratings=per_event)
        return {name: shapes[name] for name in self.input_names}


def encoder_inputs(
    input_names: Sequence[str],
    max_seq_len: int,
    histories: Sequence[Sequence[int]],
    timestamps: Sequence[Sequence[int]] | None = None,
    request_times: Sequence[int] | None = None,
    ratings: Sequence[Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """The keyword inputs of an encoder with these `input_names` (`UserEncoder.input_names`, or the "inputs" of
    ``export_config.json``) for histories of item ids 1..num_items, each cut to its most recent `max_seq_len` events.
    """
    if not histories or any(len(history) == 0 for history in histories):
        raise ValueError("every history needs at least one item.")
    given = {"input_ids": histories, "timestamps": timestamps, "target_timestamps": request_times, "ratings": ratings}
    for name in input_names[2:]:
        if given[name] is None:
            raise ValueError(f"{name} is required by this model's encoder (inputs: {list(input_names)}).")
        if len(given[name]) != len(histories):
            raise ValueError(f"{name} has {len(given[name])} rows but there are {len(histories)} histories.")
    lengths = torch.tensor([min(len(history), max_seq_len) for history in histories])
    inputs = {"lengths": lengths}
    for name in ("input_ids", "timestamps", "ratings"):
        if name not in input_names:
            continue
        padded = torch.zeros(len(histories), int(lengths.max()), dtype=torch.long)
        for row, values in enumerate(given[name]):
            if len(values) != len(histories[row]):
                raise ValueError(f"{name}[{row}] has {len(values)} values but history {row} has {len(histories[row])}.")
            kept = list(values)[-max_seq_len:]
            padded[row, : len(kept)] = torch.tensor(kept, dtype=torch.long)
        inputs[name] = padded
    if "target_timestamps" in input_names:
        inputs["target_timestamps"] = torch.tensor([int(time) for time in request_times], dtype=torch.long)
    return {name: inputs[name] for name in input_names}


def load_export_config(folder: str | os.PathLike) -> dict:
    """The ``export_config.json`` of an export folder (its "inputs" and "max_seq_len" feed `encoder_inputs`)."""
    return json.loads((Path(folder) / EXPORT_CONFIG_FILE).read_text(encoding="utf-8"))


@dataclass
class ExportedFiles:
    """Paths written by :func:`export_user_encoder` (`onnx` None when not asked for)."""

    program: Path
    onnx: Path | None
    item_table: Path
    config: Path
    vocabulary: Path | None


def _example_inputs(encoder: UserEncoder) -> dict[str, torch.Tensor]:
    """Two histories of different lengths (3 and 2 events, or fewer when max_seq_len is smaller) to trace with."""
    config = encoder.model.config
    width = min(3, config.max_seq_len)
    lengths = [width, max(1, width - 1)]
    histories = [[1 + (row + i) % config.num_items for i in range(n)] for row, n in enumerate(lengths)]
    times = [[1_700_000_000 + 60 * i for i in range(n)] for n in lengths]
    ratings = [[1 + i % config.num_ratings for i in range(n)] for n in lengths]
    inputs = encoder_inputs(encoder.input_names, config.max_seq_len, histories, times, [1_700_100_000] * 2, ratings)
    device = encoder.model.item_embeddings.weight.device
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def export_user_encoder(
    model: SequentialRecommenderPreTrainedModel,
    output_dir: str | os.PathLike,
    onnx: bool = True,
    vocabulary: ItemVocabulary | str | os.PathLike | None = None,
) -> ExportedFiles:
    """Export `model`'s user encoder (:class:`UserEncoder`, eval mode) with `torch.export` and, with `onnx`, to ONNX,
    and save its item table (and `vocabulary`, an `ItemVocabulary` or its file) into `output_dir`."""
    if model.config.similarity != "dot":
        raise ValueError(
            f"similarity={model.config.similarity!r} cannot be exported: only the dot-product similarity scores "
            "users as user_embeddings @ item_table.T; the mixture-of-logits gates are not part of the encoder graph."
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    encoder = UserEncoder(model).eval()
    inputs = _example_inputs(encoder)
    with torch.no_grad():
        program = torch.export.export(encoder, (), kwargs=inputs, dynamic_shapes=encoder.dynamic_shapes())
    files = ExportedFiles(
        program=output_dir / ENCODER_PROGRAM_FILE,
        onnx=output_dir / ENCODER_ONNX_FILE if onnx else None,
        item_table=output_dir / ITEM_TABLE_FILE,
        config=output_dir / EXPORT_CONFIG_FILE,
        vocabulary=None,
    )
    torch.export.save(program, files.program)
    if onnx:
        onnx_program = torch.onnx.export(program, (), kwargs=inputs, dynamo=True, verbose=False)
        onnx_program.save(str(files.onnx))
    with torch.no_grad():
        save_file({ITEM_TABLE_KEY: model.item_table().detach().float().cpu().contiguous()}, str(files.item_table))
    if vocabulary is not None:
        files.vocabulary = output_dir / ItemVocabulary.file_name
        if isinstance(vocabulary, ItemVocabulary):
            vocabulary.save(output_dir)
        elif Path(vocabulary).resolve() != files.vocabulary.resolve():
            shutil.copyfile(vocabulary, files.vocabulary)
    config = {
        "model_type": model.config.model_type,
        "inputs": list(encoder.input_names),
        "input_dtype": "int64",
        "output": "user_embeddings",
        "hidden_size": model.config.hidden_size,
        "num_items": model.config.num_items,
        "max_seq_len": model.config.max_seq_len,
        "padding": "right; positions from lengths on are ignored",
        "scores": "user_embeddings @ item_table.T (row 0 of item_table is padding, never an item)",
        "attention": "eager (the Triton kernels are not exported)",
    }
    files.config.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return files


def load_item_table(path_or_dir: str | os.PathLike) -> torch.Tensor:
    """The (num_items + 1, D) item table saved by :func:`export_user_encoder` (a file, or its folder)."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / ITEM_TABLE_FILE
    tensors = load_file(str(path))
    if ITEM_TABLE_KEY not in tensors:
        raise ValueError(f"{path} holds no tensor {ITEM_TABLE_KEY!r} (it has {sorted(tensors)}).")
    return tensors[ITEM_TABLE_KEY]


def _checkpoint_vocabulary(model_name_or_path: str | os.PathLike, revision: str | None) -> Path | None:
    """The checkpoint's `item_vocabulary.json` (a folder's file, or downloaded from the Hub), None without one."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    path = Path(model_name_or_path)
    if path.is_dir():
        vocabulary = path / ItemVocabulary.file_name
        return vocabulary if vocabulary.is_file() else None
    try:
        return Path(hf_hub_download(str(model_name_or_path), ItemVocabulary.file_name, revision=revision))
    except EntryNotFoundError:
        return None


def export_checkpoint(
    model_name_or_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    onnx: bool = True,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ExportedFiles:
    """Load a checkpoint (folder or Hub id) on the CPU with the eager attention and export it with
    :func:`export_user_encoder`, its `item_vocabulary.json` copied beside when it has one."""
    from transformers import AutoModel

    from ..progress import quiet_library_progress_bars

    with quiet_library_progress_bars():
        model = AutoModel.from_pretrained(
            model_name_or_path, revision=revision, trust_remote_code=trust_remote_code, attn_implementation="eager"
        )
        vocabulary = _checkpoint_vocabulary(model_name_or_path, revision)
    return export_user_encoder(model, output_dir, onnx=onnx, vocabulary=vocabulary)
