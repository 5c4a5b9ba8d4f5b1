"""Serving: the user encoder exported with `torch.export` and to ONNX (`export`), and offline top-k recommendation
for every user of a histories file, sharded over processes (`batch_prediction`)."""

from .batch_prediction import BatchPredictionArguments, read_histories, recommend_file
from .export import (
    ExportedFiles,
    UserEncoder,
    encoder_inputs,
    export_checkpoint,
    export_user_encoder,
    load_export_config,
    load_item_table,
)

__all__ = [
    "BatchPredictionArguments",
    "ExportedFiles",
    "UserEncoder",
    "encoder_inputs",
    "export_checkpoint",
    "export_user_encoder",
    "load_export_config",
    "load_item_table",
    "read_histories",
    "recommend_file",
]
