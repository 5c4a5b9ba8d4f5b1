"""Command-line arguments of training and evaluation (HfArgumentParser dataclasses) and the paper's presets.

Values are resolved in this order: dataclass defaults < preset < YAML `--config` file < command-line flags.
"""

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from ..evaluation.ranking_metrics import ACCURACY_METRICS
from .objective import NEGATIVES_FROM

STRATEGIES = ("no", "steps", "epoch")  # as transformers' TrainingArguments name them
# transformers schedulers (`get_scheduler`) that need no other arguments than the warm-up and the step count
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


# The paper's gin settings (Zhai et al. 2024, Appendix; research code configs): architecture and training per preset.
def _hstu(dataset, max_seq_len, hidden_size, layers, heads, head_dim, dropout, negatives, epochs) -> dict:
    return {
        "model_type": "hstu",
        "dataset": dataset,
        "max_seq_len": max_seq_len,
        "hidden_size": hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "attention_dim": head_dim,
        "linear_dim": head_dim,
        "dropout": dropout,
        "num_negatives": negatives,
        "num_epochs": epochs,
        "learning_rate": 1e-3,
        "batch_size": 128,
        "temperature": 0.05,
    }


PRESETS: dict[str, dict] = {
    "ml-1m-hstu": _hstu("ml-1m", 200, 50, 2, 1, 50, 0.2, 128, 101),
    "ml-1m-hstu-large": _hstu("ml-1m", 200, 50, 8, 2, 25, 0.2, 128, 101),
    "ml-20m-hstu": _hstu("ml-20m", 200, 256, 4, 4, 64, 0.2, 128, 101),
    "ml-20m-hstu-large": _hstu("ml-20m", 200, 256, 16, 8, 32, 0.2, 128, 101),
    "books-hstu": _hstu("amazon-books", 50, 64, 4, 4, 16, 0.5, 512, 201),
    "books-hstu-large": _hstu("amazon-books", 50, 64, 16, 8, 8, 0.5, 512, 201),
}
# The datasets of ../shared/data, with the ML-1M (MovieLens) and Books (Amazon) architectures.
PRESETS["ml-100k-hstu"] = {**PRESETS["ml-1m-hstu"], "dataset": "ml-100k"}
PRESETS["beauty-hstu"] = {**PRESETS["books-hstu"], "dataset": "amazon-beauty-5core"}
PRESETS["sports-hstu"] = {**PRESETS["books-hstu"], "dataset": "amazon-sports-5core"}
# SASRec twins: same data, width, depth, heads and training; feed-forward hidden = D with ReLU.
for _name, _preset in list(PRESETS.items()):
    if not _name.endswith("-large"):
        _twin = {key: value for key, value in _preset.items() if key not in ("attention_dim", "linear_dim")}
        PRESETS[_name.replace("-hstu", "-sasrec")] = {**_twin, "model_type": "sasrec"}


@dataclass
class ModelArguments:
    """Which model to train, and the architecture fields that presets and users change most."""

    model_type: str = field(default="hstu", metadata={"help": "hstu or sasrec."})
    max_seq_len: int = field(default=50, metadata={"help": "Most recent events per history."})
    hidden_size: int = field(default=64, metadata={"help": "Embedding dimension D."})
    num_hidden_layers: int = field(default=2)
    num_attention_heads: int = field(default=2)
    attention_dim: int = field(default=32, metadata={"help": "HSTU query/key size per head."})
    linear_dim: int = field(default=32, metadata={"help": "HSTU value/gate size per head."})
    dropout: float = field(default=0.2, metadata={"help": "Input and layer dropout."})
    num_negatives: int = field(default=128)
    temperature: float = field(default=0.05)
    loss: str = field(default="sampled_softmax", metadata={"help": "sampled_softmax or bce."})
    negative_sampling: str = field(default="uniform", metadata={"help": "uniform or in_batch."})
    similarity: str = field(
        default="dot", metadata={"help": "dot, mol (simplified) or mol_full (the research code's)."}
    )
    # The research code's model switches (the defaults of every run and preset; the model configs' own defaults keep
    # checkpoints saved before these fields as they were). Attention dropout stays off: the research code never
    # applies it.
    training_window: str = field(
        default="max_seq_len_plus_one",
        metadata={
            "help": "Events of a training sequence the loss reads: max_seq_len_plus_one (the research code: every "
            "encoded position supervised, the extra event only a label) or max_seq_len."
        },
    )
    bce_temperature: float | None = field(
        default=1.0, metadata={"help": "Temperature of the bce loss (the research code: 1.0; unset: --temperature)."}
    )
    hidden_act: str = field(default="relu", metadata={"help": "SASRec feed-forward activation: relu or gelu."})
    post_attention_layernorm_affine: bool = field(
        default=False,
        metadata={
            "help": "SASRec: a learned scale and shift in the post-attention layer norm (the research code: no)."
        },
    )
    use_position_bias: bool = field(default=True, metadata={"help": "HSTU relative position bias."})
    use_time_bias: bool = field(default=True, metadata={"help": "HSTU relative time bias."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "Other config fields, e.g. 'max_output_len=11,concat_ua=true'."}
    )


@dataclass
class DataArguments:
    """Where the sequences come from."""

    dataset: str = field(
        default="synthetic",
        metadata={
            "help": "A preprocessed dataset folder (scripts/preprocess.py output), a Hub dataset id pushed by "
            "scripts/push_dataset.py (owner/name), or a dataset name to build (synthetic, ml-100k, ml-1m, ml-20m, "
            "ml-latest-small, amazon-books, amazon-beauty-5core, ...)."
        },
    )
    raw_dir: str | None = field(default=None, metadata={"help": "Raw files of a named dataset already on disk."})
    protocol: str = field(default="leave_one_out", metadata={"help": "Split protocol when building a dataset."})
    item_features: bool = field(
        default=False,
        metadata={
            "help": "Embed the items' categorical features with their ids: the item table of a preprocessed dataset "
            "(preprocess.py --item_table), or the genres of a MovieLens dataset built by name."
        },
    )
    dataloader_num_workers: int = field(default=0)
    sample_ratio: float = field(
        default=1.0,
        metadata={
            "help": "Keep each event of a training history with this probability, in order (the HSTU reference "
            "code's sample_ratio; drawn anew each epoch, seeded). 1: whole histories."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the train split (a datasets.IterableDataset read shard by shard, reshuffled each epoch) "
            "instead of sampling the memory-mapped rows; each process reads its own shards, and every epoch has "
            "len(train) // batch_size steps on every process."
        },
    )


@dataclass
class RecTrainingArguments:
    """The optimisation, evaluation, checkpointing and Hub settings."""

    output_dir: str = field(default="outputs/run")
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Train into an output_dir that holds a run."})
    preset: str | None = field(default=None, metadata={"help": f"One of: {', '.join(PRESETS)}."})
    config: str | None = field(default=None, metadata={"help": "YAML file of argument values (flags override)."})
    num_epochs: int = field(default=20)
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimiser steps."})
    batch_size: int = field(default=128, metadata={"help": "Global batch size, split across processes."})
    eval_batch_size: int = field(default=256)
    learning_rate: float = field(default=1e-3)
    adam_beta1: float = field(default=0.9)
    adam_beta2: float = field(default=0.98)
    weight_decay: float = field(default=0.0)
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip gradients to this norm."})
    gradient_accumulation_steps: int = field(default=1)
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "no, bf16 or fp16 (bf16 on GPUs); unset: as `accelerate launch` (or its config) says, else no."
        },
    )
    seed: int = field(default=42)
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "HSTU attention backend: eager, hstu_triton, or unset for hstu_auto (the Triton kernels for CUDA "
            "tensors, eager otherwise). A run-time setting: checkpoints do not record it."
        },
    )
    length_group_size: int | None = field(
        default=None,
        metadata={"help": "Sequences encoded together (0 = whole batch; unset: 32 on the CPU, whole batch on GPUs)."},
    )
    lr_scheduler_type: str = field(
        default="constant",
        metadata={"help": f"One of {', '.join(SCHEDULERS)} (transformers' schedulers), after the warm-up."},
    )
    warmup_steps: int = field(default=0, metadata={"help": "Linear learning-rate warm-up steps."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Warm-up as a share of the steps (if no warmup_steps)."})
    torch_compile: bool = field(default=False, metadata={"help": "Compile the model with torch.compile (inductor)."})
    negatives_from: str = field(
        default="catalogue",
        metadata={
            "help": "Uniform negatives from the 'catalogue' (every id of the item table) or the ids seen in 'train'."
        },
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to validate: no, steps or epoch."})
    eval_steps: int | None = field(default=None, metadata={"help": "Optimiser steps between validations ('steps')."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save the training state: no, steps, epoch."})
    save_steps: int | None = field(default=None, metadata={"help": "Optimiser steps between checkpoints ('steps')."})
    metric_for_best_model: str = field(default="ndcg@10")
    early_stopping_patience: int | None = field(default=5, metadata={"help": "Evaluations without improvement."})
    min_epochs: float = field(default=0.0, metadata={"help": "Epochs trained before early stopping may stop a run."})
    divergence_factor: float | None = field(
        default=10.0,
        metadata={"help": "Stop when a step's loss exceeds this many times its running mean (NaN or inf always stop)."},
    )
    top_k: str = field(default="10,50,100,200", metadata={"help": "Cut-offs K of the metrics (HR@K, NDCG@K, ...)."})
    save_total_limit: int = field(default=2, metadata={"help": "Full training states kept."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder of a previous run, or 'latest' in output_dir."}
    )
    report_to: str = field(default="tensorboard", metadata={"help": "Accelerate tracker, or 'none'."})
    logging_steps: int = field(default=50)
    push_to_hub: bool = field(default=False)
    hub_model_id: str | None = field(default=None)
    hub_private_repo: bool = field(default=False)

    def __post_init__(self) -> None:
        """Reject values the loop would otherwise misread, naming the field."""
        for name, allowed in (
            ("eval_strategy", STRATEGIES),
            ("save_strategy", STRATEGIES),
            ("lr_scheduler_type", SCHEDULERS),
            ("negatives_from", NEGATIVES_FROM),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}.")
        for strategy, steps in (("eval_strategy", "eval_steps"), ("save_strategy", "save_steps")):
            if getattr(self, strategy) == "steps" and (getattr(self, steps) or 0) < 1:
                raise ValueError(f"{strategy}='steps' needs {steps} >= 1, got {getattr(self, steps)!r}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}.")
        if self.divergence_factor is not None and self.divergence_factor <= 1.0:
            raise ValueError(f"divergence_factor must be > 1 (or unset), got {self.divergence_factor}.")
        validation_metrics = {"mrr"} | {f"{name}@{k}" for name in ACCURACY_METRICS for k in self.k_values}
        if self.metric_for_best_model not in validation_metrics:
            raise ValueError(
                f"metric_for_best_model must be one of the validation metrics {sorted(validation_metrics)}, got "
                f"{self.metric_for_best_model!r}."
            )

    @property
    def k_values(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.top_k.split(","))


ARGUMENT_CLASSES = (ModelArguments, DataArguments, RecTrainingArguments)


def _field_types() -> dict[str, type]:
    types_by_name = {}
    for argument_class in ARGUMENT_CLASSES:
        hints = typing.get_type_hints(argument_class)
        for dataclass_field in dataclasses.fields(argument_class):
            types_by_name[dataclass_field.name] = hints[dataclass_field.name]
    return types_by_name


def _number_from_text(text: str, number_type: type) -> int | float | None:
    """`text` as a `number_type` (YAML 1.1 reads `1e-3` as a string), or None when it is not one."""
    try:
        number = float(text.strip().replace("_", ""))
    except ValueError:
        return None
    if number_type is int:
        return int(number) if number.is_integer() else None
    return number


def _checked_value(source: str, name: str, value, expected):
    """`value` if it fits the annotation `expected`, a number read from a numeric string for an int or float field
    (PyYAML reads `1e-3` as a string), else a ValueError naming `source` and `name`."""
    allowed = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
    for candidate in allowed:
        if candidate is type(None) and value is None:
            return value
        if candidate is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if candidate is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if candidate in (str, bool) and isinstance(value, candidate):
            return value
    if isinstance(value, str):
        for candidate in allowed:
            if candidate in (int, float) and (number := _number_from_text(value, candidate)) is not None:
                return number
    names = " or ".join(getattr(c, "__name__", str(c)) for c in allowed)
    raise ValueError(f"{source}: field '{name}' must be {names}, got {value!r}.")


def resolve_defaults(config_file: str | None, preset: str | None) -> dict:
    """Values of the preset (from the flag, else from the YAML file) updated by the YAML file, type-checked against
    the argument dataclasses."""
    field_types = _field_types()
    loaded: dict = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"Config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of argument names to values.")
        unknown = sorted(set(loaded) - set(field_types))
        if unknown:
            hints = "".join(
                f" Did you mean '{close[0]}' for '{name}'?"
                for name in unknown
                if (close := difflib.get_close_matches(name, field_types, n=1))
            )
            raise ValueError(f"{path}: unknown field(s) {unknown}.{hints} Known fields: {sorted(field_types)}.")
        loaded = {name: _checked_value(str(path), name, value, field_types[name]) for name, value in loaded.items()}
    preset = preset or loaded.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"Unknown preset '{preset}'. Available presets: {', '.join(sorted(PRESETS))}.")
    return {**(PRESETS[preset] if preset else {}), **loaded}


def parse_training_arguments(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, RecTrainingArguments]:
    """Parse the command line, with `--preset` and `--config FILE` providing defaults that flags override."""
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    first_pass = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)[2]
    parser.set_defaults(**resolve_defaults(first_pass.config, first_pass.preset))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args


# Fields that say where a run reads or writes on this machine, or where it is pushed: not part of a command that
# reproduces the model elsewhere.
MACHINE_LOCAL_FIELDS = (
    "output_dir",
    "overwrite_output_dir",
    "config",
    "resume_from_checkpoint",
    "push_to_hub",
    "hub_model_id",
    "hub_private_repo",
)


def reproducing_arguments(*argument_objects, **replacements) -> list[str]:
    """Command-line flags that reproduce the given argument dataclasses: `--preset` when one was used, then every
    field (the dataset first) whose value differs from the dataclass default or the preset's value, with
    `replacements` (e.g. `dataset="data/ml-1m"`) in place of the values, and without the MACHINE_LOCAL_FIELDS."""
    values = {name: value for arguments in argument_objects for name, value in vars(arguments).items()}
    values.update(replacements)
    baseline = {
        field.name: field.default
        for arguments in argument_objects
        for field in dataclasses.fields(arguments)
        if field.default is not dataclasses.MISSING
    }
    baseline.update(PRESETS.get(values.get("preset"), {}))
    flags = ["--preset", values["preset"]] if values.get("preset") else []
    for name in sorted(values, key=lambda name: name != "dataset"):  # the dataset first, then the fields in order
        value = values[name]
        if name in (*MACHINE_LOCAL_FIELDS, "preset") or (name in baseline and value == baseline[name]):
            continue
        flags += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags
