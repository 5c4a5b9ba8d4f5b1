"""Model cards for trained recommenders: Hub metadata (model-index with the ranking metrics) and a rendered README.

`build_model_card` fills `model_card_template.md` (shipped inside the package) from the model configuration, the
metrics of `hf_hstu.evaluation.ranking_metrics`, the dataset and protocol, the training time, the hardware and the command that
produced the model. Push the card after the model: `push_to_hub` writes a README of its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card_template.md"
TASK_TYPE, TASK_NAME = "sequential-recommendation", "Sequential Recommendation"
LEAVE_ONE_OUT_PROTOCOL = (
    "leave-one-out: each user's last event is the test target and the one before it the validation target; "
    "every item of the catalogue is ranked for each user (full-corpus ranking), items already in the user's history "
    "excluded; HR@K (= Recall@K with one target), NDCG@K and MRR averaged over users."
)
ARCHITECTURES = {
    "hstu": (
        "HSTU",
        "An HSTU (Hierarchical Sequential Transduction Unit) generative recommender (Zhai et al., ICML 2024)",
    ),
    "sasrec": ("SASRec", "A SASRec self-attentive sequential recommender (Kang & McAuley, ICDM 2018)"),
}


# Metrics that are not shares: average recommendation popularity (training events) and novelty (bits).
_UNBOUNDED_METRICS = ("arp@", "novelty@")


def _check_metrics(kind: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics as floats, after checking each is a number in [0, 1], or a finite number >= 0 for ARP and novelty
    (a NaN or a percentage is a bug upstream)."""
    for name, value in metrics.items():
        upper = math.inf if name.startswith(_UNBOUNDED_METRICS) else 1.0
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0.0 <= value <= upper
            or value == math.inf
        ):
            bounds = "a finite number >= 0" if upper == math.inf else "a number in [0, 1]"
            raise ValueError(f"{kind} {name!r} must be {bounds}, got {value!r}")
    return {name: float(value) for name, value in metrics.items()}


def dataset_display_name(name: str, metadata: Mapping[str, Any] | None = None) -> str:
    """The dataset's name for a model card: ``name``, or, when preprocessing found that its raw file is not the
    official one (``source_modified`` in ``preprocessing.json``), ``name`` marked as modified with its row count:
    "ml-1m (modified: 865,611 rows, not the official 1,000,209)"."""
    if not metadata or not metadata.get("source_modified"):
        return name
    rows, official = metadata.get("source_rows"), metadata.get("official_rows")
    if rows is None:
        return f"{name} (modified: not the official file)"
    if official is None or official == rows:
        return f"{name} (modified: {rows:,} rows, not the official file)"
    return f"{name} (modified: {rows:,} rows, not the official {official:,})"


def dataset_metadata_id(metadata: Mapping[str, Any], default: str) -> str:
    """The short dataset id of a card's metadata: the dataset's name (`default` when preprocessing.json has none),
    marked "-modified" when its raw file was not the official one (the card's text says how: `dataset_display_name`).
    """
    name = str(metadata.get("dataset", default))
    return f"{name}-modified" if metadata.get("source_modified") else name


def format_duration(seconds: float) -> str:
    """A training time for people: 3725.4 -> "1 h 02 min 05 s"."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"training time must be a non-negative number of seconds, got {seconds!r}")
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def build_model_card(
    config: Mapping[str, Any],
    *,
    dataset_name: str,
    dataset_id: str,
    command: str,
    metrics: Mapping[str, float] | None = None,
    split: str = "test",
    protocol: str = LEAVE_ONE_OUT_PROTOCOL,
    training_time_s: float | None = None,
    hardware: str | None = None,
    model_id: str | None = None,
    model_name: str | None = None,
    training_config: Mapping[str, Any] | None = None,
    paper_results: Mapping[str, float] | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """Build the model card of a trained (or yet to be trained) recommender.

    Args:
        config: the model configuration as a dict (`model.config.to_dict()`, or a preset's fields); its
            `model_type` ("hstu" or "sasrec") picks the wording.
        dataset_name: readable dataset name, e.g. "MovieLens-1M".
        dataset_id: dataset identifier for the metadata (a Hub dataset id or a short name such as "ml-1m").
        command: the exact command that trains and evaluates this model.
        metrics: figures measured on `split`, as returned by `RankingMetricsAccumulator.compute()` ("hr@10": 0.31,
            ...); they go to the card's table and to its model-index. None when nothing was measured yet: the card
            then says so and has no model-index.
        split: the split the metrics were measured on.
        protocol: how the evaluation was done (split, ranking, filtering).
        training_time_s: wall-clock training time in seconds.
        hardware: what it ran on, e.g. "1x NVIDIA H100 80GB" or "2-core CPU".
        model_id: Hub repository id, used in the usage snippet.
        model_name: card title and model-index name; defaults to "<architecture> on <dataset_name>".
        training_config: training settings worth showing (optimizer, batch size, epochs, ...).
        paper_results: figures Zhai et al. (2024) report for this setting, shown in a separate, labelled section
            and never in the model-index.
        license: license id of the weights.

    Returns:
        A `huggingface_hub.ModelCard`: `card.push_to_hub(repo_id)` or `card.save(path)`.
    """
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"config['model_type'] must be one of {sorted(ARCHITECTURES)}, got {model_type!r}")
    short_name, architecture = ARCHITECTURES[model_type]
    model_name = model_name or f"{short_name} on {dataset_name}"
    results = _check_metrics("metric", metrics) if metrics else {}
    eval_results = [
        EvalResult(
            task_type=TASK_TYPE,
            task_name=TASK_NAME,
            dataset_type=dataset_id,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=name,  # "hr@10"
            metric_name=name.upper(),  # "HR@10"
            metric_value=value,
        )
        for name, value in results.items()
    ]
    card_data = ModelCardData(
        library_name="transformers",
        license=license,
        tags=["hf_hstu", model_type, "recommendation", TASK_TYPE],
        datasets=[dataset_id],
        model_name=model_name,
        eval_results=eval_results or None,
    )
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True
    )
    content = environment.from_string(TEMPLATE_PATH.read_text(encoding="utf-8")).render(
        card_data=card_data.to_yaml(),
        model_name=model_name,
        model_type=model_type,
        architecture=architecture,
        dataset_name=dataset_name,
        model_path=model_id or "path/to/checkpoint",
        protocol=protocol,
        split=split,
        results=[(name.upper(), value) for name, value in results.items()],
        paper_results=[
            (name.upper(), value) for name, value in _check_metrics("paper figure", paper_results or {}).items()
        ],
        command=command,
        training_time=format_duration(training_time_s) if training_time_s is not None else None,
        hardware=hardware,
        config_json=json.dumps(dict(config), indent=2, sort_keys=True, default=str),
        training_config_json=json.dumps(dict(training_config), indent=2, default=str) if training_config else None,
    )
    return ModelCard(content)
