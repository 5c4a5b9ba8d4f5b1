"""The paper's tables, ours beside them: train HSTU, HSTU-large, SASRec (the paper's recipe) and a strong SASRec on
one dataset over several seeds with the package's training entry point, and write a markdown table of our test
HR@10 / NDCG@10 (mean ± std over seeds) beside the figures published for the same setting.

Each model is a training preset (`hf_hstu.training.arguments.PRESETS`) plus, where the recipe differs from every
preset, a few flags on top of it (`MODEL_RECIPES`); the runs go through `parse_training_arguments` and
`hf_hstu.training.loop.train` exactly as `scripts/train.py` would, so changes to the presets, the loop and the
metrics flow into the reproduction. The data are preprocessed once into `<output_dir>/data` and shared by all runs.
"""

from __future__ import annotations

import json
import logging
import shlex
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import PartialState

from .data import METADATA_FILE, PreprocessingConfig, preprocess
from .data.item_features import ItemTableConfig
from .hub.model_card import dataset_display_name, format_duration
from .hub.push import describe_hardware
from .training.arguments import PRESETS, parse_training_arguments
from .training.data import PROTOCOL_DESCRIPTIONS
from .training.loop import TrainingResult, complete_checkpoints, train

logger = logging.getLogger(__name__)

# The two metrics the papers publish (leave-one-out, full-corpus ranking), then the other cut-offs we show when the
# runs measured them.
PUBLISHED_METRICS = ("hr@10", "ndcg@10")
EXTRA_METRICS = ("hr@50", "ndcg@50", "hr@200", "ndcg@200")
# Flags that make a run a quick smoke test of the pipeline (numbers not comparable with anything).
REDUCED_RUN_FLAGS = ("--num_epochs", "1", "--max_steps", "2", "--report_to", "none")


@dataclass(frozen=True)
class PublishedResult:
    """Test HR@10 / NDCG@10 published for one model on one dataset, and where."""

    hr_at_10: float
    ndcg_at_10: float
    source: str


ZHAI_2024 = "Zhai et al., ICML 2024 (arXiv:2402.17152)"
STRONG_SASREC_SOURCE = "the strongest published SASRec recipe on Beauty (sampled softmax, 256 negatives, length 50)"


@dataclass(frozen=True)
class ModelRecipe:
    """How one row of the table trains: the preset family, and flags on top of the dataset's preset of it."""

    label: str
    family: str  # the preset suffix: "hstu", "hstu-large" or "sasrec"
    overrides: tuple[str, ...] = ()
    amazon_overrides: tuple[str, ...] = ()  # added on the Amazon datasets


MODEL_RECIPES: dict[str, ModelRecipe] = {
    "hstu": ModelRecipe("HSTU", "hstu"),
    "hstu-large": ModelRecipe("HSTU-large", "hstu-large"),
    "sasrec": ModelRecipe("SASRec (paper recipe)", "sasrec"),
    # No preset trains it: the dataset's SASRec preset with the recipe's loss, negatives and (Amazon) length.
    "sasrec-strong": ModelRecipe(
        "SASRec (strong recipe)",
        "sasrec",
        overrides=("--loss", "sampled_softmax", "--negative_sampling", "uniform", "--num_negatives", "256"),
        amazon_overrides=("--max_seq_len", "50"),
    ),
}


@dataclass(frozen=True)
class DatasetSetup:
    """A dataset the reproduction knows: its presets and the figures published on it."""

    name: str  # the `preprocess` dataset name
    title: str
    preset_prefix: str  # "<prefix>-hstu" etc.
    architecture_prefix: str  # the presets to take a family from when the dataset has no preset of its own for it
    amazon: bool = False
    published: dict[str, PublishedResult] = field(default_factory=dict)

    def preset(self, family: str) -> str:
        own = f"{self.preset_prefix}-{family}"
        return own if own in PRESETS else f"{self.architecture_prefix}-{family}"


DATASETS: dict[str, DatasetSetup] = {
    setup.name: setup
    for setup in (
        DatasetSetup(
            "ml-1m",
            "MovieLens-1M",
            "ml-1m",
            "ml-1m",
            published={
                "hstu": PublishedResult(0.3097, 0.1720, ZHAI_2024),
                "hstu-large": PublishedResult(0.3294, 0.1893, ZHAI_2024),
                "sasrec": PublishedResult(0.2853, 0.1603, ZHAI_2024),
            },
        ),
        DatasetSetup(
            "ml-20m",
            "MovieLens-20M",
            "ml-20m",
            "ml-20m",
            published={
                "hstu": PublishedResult(0.3273, 0.1895, ZHAI_2024),
                "hstu-large": PublishedResult(0.3556, 0.2098, ZHAI_2024),
            },
        ),
        DatasetSetup(
            "amazon-books",
            "Amazon Books",
            "books",
            "books",
            amazon=True,
            published={
                "hstu": PublishedResult(0.0416, 0.0227, ZHAI_2024),
                "hstu-large": PublishedResult(0.0478, 0.0262, ZHAI_2024),
            },
        ),
        DatasetSetup(
            "amazon-beauty-5core",
            "Amazon Beauty 5-core",
            "beauty",
            "books",
            amazon=True,
            published={"sasrec-strong": PublishedResult(0.0921, 0.0531, STRONG_SASREC_SOURCE)},
        ),
        DatasetSetup("amazon-sports-5core", "Amazon Sports 5-core", "sports", "books", amazon=True),
        DatasetSetup("ml-100k", "MovieLens-100K", "ml-100k", "ml-1m"),
        DatasetSetup("synthetic", "the embedded synthetic dataset", "ml-100k", "ml-1m"),
    )
}


@dataclass
class RunRecord:
    """One trained (model, seed): its test metrics and times, as `train` returned them."""

    model: str
    seed: int
    preset: str
    flags: list[str]
    output_dir: str
    test_metrics: dict[str, float]
    best_epoch: int | None
    train_seconds: float
    wall_seconds: float
    command: str


@dataclass
class Reproduction:
    """Everything the table is made of; `to_markdown` renders it."""

    dataset: str
    dataset_title: str
    dataset_name: str  # as the model cards name it, "(modified: ...)" when the raw file is not the official one
    dataset_statistics: dict
    protocol: str
    models: list[str]
    seeds: list[int]
    reduced: bool
    command: str
    hardware: str
    records: list[RunRecord] = field(default_factory=list)
    wall_seconds: float = 0.0

    def to_markdown(self) -> str:
        return format_reproduction(self)


def parse_list(text: str, what: str, known: Sequence[str] | None = None) -> list[str]:
    """'a,b' -> ['a', 'b'], each checked against `known`; a ValueError naming `what` otherwise."""
    values = [value.strip() for value in text.split(",") if value.strip()]
    if not values:
        raise ValueError(f"{what}: expected a comma-separated list, got {text!r}.")
    if known is not None:
        unknown = [value for value in values if value not in known]
        if unknown:
            raise ValueError(f"{what}: unknown {unknown}; known: {', '.join(known)}.")
    return values


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for value in parse_list(text, "seeds"):
        try:
            seeds.append(int(value))
        except ValueError as error:
            raise ValueError(f"seeds: {value!r} is not an integer (in {text!r}).") from error
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: {text!r} repeats a seed.")
    return seeds


def dataset_setup(name: str) -> DatasetSetup:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r} for the reproduction; known: {', '.join(DATASETS)}.")
    return DATASETS[name]


def run_flags(setup: DatasetSetup, model: str) -> tuple[str, list[str]]:
    """The preset and the flags on top of it that train `model` on `setup`'s dataset."""
    recipe = MODEL_RECIPES[model]
    preset = setup.preset(recipe.family)
    if preset not in PRESETS:
        raise ValueError(f"No preset {preset!r} for {recipe.label} on {setup.name}; presets: {', '.join(PRESETS)}.")
    return preset, ["--preset", preset, *recipe.overrides, *(recipe.amazon_overrides if setup.amazon else ())]


def reproduce(
    dataset: str,
    output_dir: str | Path,
    *,
    models: Sequence[str] = tuple(MODEL_RECIPES),
    seeds: Sequence[int] = (42, 43, 44),
    raw_dir: str | None = None,
    raw_path: str | None = None,
    protocol: str = "leave_one_out",
    reduced: bool = False,
    train_flags: Sequence[str] = (),
    command: str = "",
    markdown_file: str | Path | None = None,
    resume: bool = False,
    item_features: bool = False,
) -> Reproduction:
    """Preprocess `dataset` into `<output_dir>/data`, train each model with each seed into
    `<output_dir>/<model>/seed_<seed>`, and write `reproduction.json` and the markdown table (`markdown_file`, by
    default `<output_dir>/reproduction_<dataset>.md`) after every run, so that a stopped reproduction leaves the
    table of the runs it finished.

    `train_flags` are `scripts/train.py` flags added to every run (after the recipe's, so they win); `reduced` adds
    `REDUCED_RUN_FLAGS` before them: a smoke test whose numbers are not comparable with anything. With `resume`, the
    runs recorded in `<output_dir>/reproduction.json` with the same flags are kept, and a run stopped part-way
    continues from its latest checkpoint. With `item_features` (MovieLens) the data keep the genres and every run
    embeds them with the item ids (`--item_features true`): the ids + genres side of the ablation.
    """
    setup = dataset_setup(dataset)
    models = list(models)
    for model in models:
        if model not in MODEL_RECIPES:
            raise ValueError(f"models: unknown {model!r}; known: {', '.join(MODEL_RECIPES)}.")
    if not models or not seeds:
        raise ValueError(f"Nothing to reproduce: models {models}, seeds {list(seeds)}.")
    planned = {model: run_flags(setup, model) for model in models}  # every preset checked before any work
    output_dir = Path(output_dir)
    markdown_file = Path(markdown_file) if markdown_file else output_dir / f"reproduction_{dataset}.md"
    data_dir = output_dir / "data"
    previous = _previous_reproduction(output_dir, setup.name) if resume else None
    start = time.perf_counter()
    data = preprocess(
        setup.name,
        data_dir,
        config=PreprocessingConfig(split=protocol),
        raw_dir=raw_dir,
        raw_path=raw_path,
        overwrite=True,
        item_table=ItemTableConfig(item_table="genres") if item_features else None,
    )
    metadata = json.loads((data_dir / METADATA_FILE).read_text(encoding="utf-8"))
    reproduction = Reproduction(
        dataset=setup.name,
        dataset_title=setup.title,
        dataset_name=dataset_display_name(setup.name, metadata),
        dataset_statistics={key: data.metadata.get(key) for key in ("num_users", "num_items", "num_interactions")},
        protocol=protocol,
        models=models,
        seeds=list(seeds),
        reduced=reduced,
        command=command,
        hardware=describe_hardware(PartialState().device),
    )
    if previous is not None:
        reproduction.wall_seconds = previous.wall_seconds
    start -= reproduction.wall_seconds
    for model in models:
        preset, flags = planned[model]
        flags = [
            *flags,
            *(("--item_features", "true") if item_features else ()),
            *(REDUCED_RUN_FLAGS if reduced else ()),
        ]
        flags += train_flags
        for seed in seeds:
            run_dir = output_dir / model / f"seed_{seed}"
            kept = (
                [r for r in previous.records if (r.model, r.seed, r.flags) == (model, seed, flags)] if previous else []
            )
            logger.info("Reproduction of %s: %s, seed %d%s", setup.name, model, seed, ", kept" if kept else "")
            argv = [*flags, "--dataset", str(data_dir), "--seed", str(seed), "--output_dir", str(run_dir)]
            argv += ["--resume_from_checkpoint", "latest"] if resume and complete_checkpoints(run_dir) else []
            reproduction.records.append(kept[0] if kept else _train_run(model, seed, preset, flags, argv))
            reproduction.wall_seconds = time.perf_counter() - start
            write_reproduction(reproduction, output_dir, markdown_file)  # after each run, kept ones too
    return reproduction


def _train_run(model: str, seed: int, preset: str, flags: list[str], argv: list[str]) -> RunRecord:
    """Train one (model, seed) with `scripts/train.py`'s arguments `argv` (a fresh run unless it resumes)."""
    if "--resume_from_checkpoint" not in argv:
        argv = [*argv, "--overwrite_output_dir", "true"]
    start = time.perf_counter()
    result: TrainingResult = train(*parse_training_arguments(argv))
    if result.test_metrics is None:
        raise ValueError(f"The run {result.output_dir} has no test metrics (its dataset has no test split).")
    return RunRecord(
        model=model,
        seed=seed,
        preset=preset,
        flags=flags,
        output_dir=result.output_dir,
        test_metrics=dict(result.test_metrics),
        best_epoch=result.best_epoch,
        train_seconds=result.train_seconds,
        wall_seconds=time.perf_counter() - start,
        command=result.command,
    )


def _previous_reproduction(output_dir: Path, dataset: str) -> Reproduction | None:
    """The reproduction recorded in `output_dir` (None when there is none), checked to be of `dataset`."""
    path = output_dir / "reproduction.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    try:
        records = [RunRecord(**record) for record in saved.pop("records")]
        previous = Reproduction(**saved, records=records)
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not a reproduction record of this version ({error}); resume without it."
        ) from error
    if previous.dataset != dataset:
        raise ValueError(
            f"{path} records a reproduction on {previous.dataset}, not {dataset}: resume in another folder."
        )
    return previous


def write_reproduction(reproduction: Reproduction, output_dir: Path, markdown_file: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "reproduction.json").write_text(json.dumps(asdict(reproduction), indent=2))
    markdown_file.parent.mkdir(parents=True, exist_ok=True)
    markdown_file.write_text(reproduction.to_markdown())


def format_mean_std(values: Sequence[float]) -> str:
    """ "mean ± sample standard deviation", or the value alone when there is one."""
    mean = statistics.fmean(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ± {statistics.stdev(values):.4f}"


def _metric(record: RunRecord, name: str) -> float:
    if name not in record.test_metrics:
        raise ValueError(
            f"The run {record.output_dir} has no test {name} (it measured {sorted(record.test_metrics)}); "
            "the table needs --top_k to include 10."
        )
    return record.test_metrics[name]


def _span(values: Sequence[float], unit: str = "") -> str:
    low, high = min(values), max(values)
    return f"{low:g}{unit}" if low == high else f"{low:g}-{high:g}{unit}"


def format_reproduction(reproduction: Reproduction) -> str:
    """The markdown note: what was run and how, the table (ours as mean ± std over seeds beside the published
    figures), each seed's figures, and each run's command."""
    setup = DATASETS[reproduction.dataset]
    records = reproduction.records
    extra = [name for name in EXTRA_METRICS if records and all(name in r.test_metrics for r in records)]
    statistics_text = ", ".join(
        f"{value:,} {key.removeprefix('num_')}" for key, value in reproduction.dataset_statistics.items() if value
    )
    partial = reproduction.dataset_name != reproduction.dataset
    lines = [f"# Reproduction: {reproduction.dataset_title}{' (partial data)' if partial else ''}", ""]
    if reproduction.reduced:
        lines += [
            "**Reduced mode** (`--reduced`: 1 epoch of at most 2 steps per run): a smoke test of the pipeline. "
            "These numbers are not comparable with the published ones or with trained models.",
            "",
        ]
    if partial:
        lines += [
            f"**Partial data**: {reproduction.dataset_name}. The published figures were measured on the complete "
            "dataset; ours are not comparable with them.",
            "",
        ]
    lines += [
        f"- Dataset: {reproduction.dataset_name} ({statistics_text}); protocol: "
        f"{PROTOCOL_DESCRIPTIONS.get(reproduction.protocol, reproduction.protocol)}",
        f"- Command: `{reproduction.command}`" if reproduction.command else "- Command: (called from Python)",
        f"- Hardware: {reproduction.hardware}; wall time of the whole reproduction: "
        f"{format_duration(reproduction.wall_seconds)}.",
        f"- Seeds: {', '.join(map(str, reproduction.seeds))}; ours: mean ± sample standard deviation over the seeds "
        'run (std left out for one seed); published: as reported, "-" where nothing is published for this '
        "dataset and model.",
        "",
    ]
    header = ["model", "recipe", "seeds", "HR@10", "HR@10 published", "NDCG@10", "NDCG@10 published"]
    header += [name.upper() for name in extra] + ["best epochs", "training per seed"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in (model for model in MODEL_RECIPES if model in reproduction.models):
        runs = [r for r in records if r.model == model]
        if not runs:
            continue
        published = setup.published.get(model)
        recipe = " ".join(runs[0].flags)
        cells = [
            MODEL_RECIPES[model].label,
            f"`{recipe}`",
            str(len(runs)),
            format_mean_std([_metric(r, "hr@10") for r in runs]),
            f"{published.hr_at_10:.4f}" if published else "-",
            format_mean_std([_metric(r, "ndcg@10") for r in runs]),
            f"{published.ndcg_at_10:.4f}" if published else "-",
            *(format_mean_std([r.test_metrics[name] for r in runs]) for name in extra),
            _span(epochs) if (epochs := [r.best_epoch for r in runs if r.best_epoch is not None]) else "-",
            _span([round(r.train_seconds) for r in runs], " s"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    unfinished = [
        f"{MODEL_RECIPES[model].label} seed {seed}"
        for model in reproduction.models
        for seed in reproduction.seeds
        if not any(r.model == model and r.seed == seed for r in records)
    ]
    if unfinished:
        lines += ["", f"Not run (yet): {', '.join(unfinished)}."]
    sources = sorted({p.source for model, p in setup.published.items() if model in reproduction.models})
    if sources:
        lines += ["", "Published figures: " + "; ".join(sources) + "."]
    lines += ["", "## Each run", ""]
    header = ["model", "seed", *(name.upper() for name in (*PUBLISHED_METRICS, *extra)), "best epoch"]
    header += ["training", "wall"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        cells = [
            MODEL_RECIPES[r.model].label,
            str(r.seed),
            *(f"{r.test_metrics[name]:.4f}" for name in (*PUBLISHED_METRICS, *extra)),
            str(r.best_epoch),
            f"{r.train_seconds:.0f} s",
            f"{r.wall_seconds:.0f} s",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Commands of the runs", ""]
    lines += [f"- {MODEL_RECIPES[r.model].label}, seed {r.seed}: `{r.command}`" for r in records]
    return "\n".join(lines) + "\n"


def reproduction_command(argv: Sequence[str]) -> str:
    """How the note names the command that made it."""
    return shlex.join(["python", "scripts/reproduce.py", *argv])
