"""Model configs built from the training arguments."""

import dataclasses
import difflib

from transformers import PreTrainedConfig

from ..data.item_features import ItemFeatureTable
from ..modeling.configuration_hstu import HSTUConfig
from ..modeling.configuration_recommender import SequentialRecommenderConfig
from ..modeling.configuration_sasrec import SASRecConfig
from ..modeling.modeling_hstu import HSTUModel
from ..modeling.modeling_sasrec import SASRecModel
from .arguments import ModelArguments

MODEL_CLASSES = {"hstu": (HSTUConfig, HSTUModel), "sasrec": (SASRecConfig, SASRecModel)}


def build_model_config(
    model_args: ModelArguments, num_items: int, item_features: ItemFeatureTable | None = None
) -> SequentialRecommenderConfig:
    """The model config of `model_args` for a catalogue of `num_items` items (with `item_features`' fields)."""
    if model_args.model_type not in MODEL_CLASSES:
        raise ValueError(f"model_type must be one of {sorted(MODEL_CLASSES)}, got '{model_args.model_type}'.")
    config_class = MODEL_CLASSES[model_args.model_type][0]
    values = {
        "num_items": num_items,
        "max_seq_len": model_args.max_seq_len,
        "hidden_size": model_args.hidden_size,
        "num_hidden_layers": model_args.num_hidden_layers,
        "num_attention_heads": model_args.num_attention_heads,
        "input_dropout": model_args.dropout,
        "num_negatives": model_args.num_negatives,
        "temperature": model_args.temperature,
        "loss": model_args.loss,
        "negative_sampling": model_args.negative_sampling,
        "similarity": model_args.similarity,
        "training_window": model_args.training_window,
        "bce_temperature": model_args.bce_temperature,
    }
    if model_args.model_type == "hstu":
        values.update(
            attention_dim=model_args.attention_dim,
            linear_dim=model_args.linear_dim,
            linear_dropout=model_args.dropout,
            use_position_bias=model_args.use_position_bias,
            use_time_bias=model_args.use_time_bias,
        )
    else:
        values.update(
            attention_dropout=model_args.dropout,
            hidden_dropout=model_args.dropout,
            hidden_act=model_args.hidden_act,
            post_attention_layernorm_affine=model_args.post_attention_layernorm_affine,
        )
    if item_features is not None:
        values.update(item_features.config_fields())
    values.update(_parse_overrides(model_args.config_overrides, config_class))
    return config_class(**values)


def _parse_overrides(overrides: str | None, config_class: type) -> dict:
    """'name=value,name=value' -> typed values, using the config's defaults to pick each type (an optional field,
    None by default, takes "none" or an int)."""
    if not overrides:
        return {}
    model_fields = {field.name for field in dataclasses.fields(config_class)} - {
        field.name for field in dataclasses.fields(PreTrainedConfig)
    }
    defaults = {name: value for name, value in config_class(num_items=1).to_dict().items() if name in model_fields}
    parsed = {}
    for item in overrides.split(","):
        name, separator, text = item.partition("=")
        name = name.strip()
        if not separator or name not in defaults:
            close = difflib.get_close_matches(name, defaults, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"config_overrides: '{item}' is not 'field=value' with a field of {config_class.__name__}.{hint}"
            )
        default = defaults[name]
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(f"config_overrides: field '{name}' must be true or false, got '{text}'.")
            parsed[name] = text.lower() == "true"
        elif isinstance(default, (int, float)):
            try:
                parsed[name] = type(default)(text)
            except ValueError as error:
                raise ValueError(
                    f"config_overrides: field '{name}' must be {type(default).__name__}, got '{text}'."
                ) from error
        else:
            parsed[name] = text
    return parsed
