"""scripts/reproduce.py as a user runs it: every model of the table trained over seeds in a reduced mode, a table whose
numbers are the runs' own test metrics, the published figures beside ours, and named errors for bad input."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from data_testing import shared_dataset

from hf_hstu.reproduction import (
    DATASETS,
    MODEL_RECIPES,
    Reproduction,
    RunRecord,
    parse_list,
    parse_seeds,
    reproduce,
    run_flags,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Small enough for seconds per run; the layer counts and negatives of the recipes are left as they are.
TINY_FLAGS = ["--max_seq_len", "20", "--hidden_size", "16", "--batch_size", "32"]
EXTRA = ("hr@50", "ndcg@50", "hr@200", "ndcg@200")


def _row(markdown: str, label: str) -> list[str]:
    """The cells of the main table's row of `label`."""
    rows = [line for line in markdown.split("## Each run")[0].splitlines() if line.startswith(f"| {label} |")]
    assert len(rows) == 1, f"expected one row for {label} in:\n{markdown}"
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def _mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def test_reduced_reproduction_tables_the_runs_own_metrics(tmp_path):
    models, seeds = ("sasrec-strong", "hstu-large"), (3, 4)  # the two recipes that differ from a dataset's presets
    reproduction = reproduce(
        "synthetic",
        tmp_path,
        models=models,
        seeds=seeds,
        reduced=True,
        train_flags=TINY_FLAGS,
        command="python scripts/reproduce.py",
    )
    markdown = (tmp_path / "reproduction_synthetic.md").read_text()
    assert markdown == reproduction.to_markdown()
    assert "**Reduced mode**" in markdown and "not comparable" in markdown
    assert "Command: `python scripts/reproduce.py`" in markdown and "Not run (yet)" not in markdown
    saved = json.loads((tmp_path / "reproduction.json").read_text())
    assert [(r["model"], r["seed"]) for r in saved["records"]] == [(m, s) for m in models for s in seeds]
    assert markdown.index("| HSTU-large |") < markdown.index("| SASRec (strong recipe) |")  # the table's order

    layers = {}
    for model in models:
        recipe = MODEL_RECIPES[model]
        results = [json.loads((tmp_path / model / f"seed_{s}" / "results.json").read_text()) for s in seeds]
        metrics = [result["test_metrics"] for result in results]
        cells = _row(markdown, recipe.label)
        assert cells[2] == "2"
        assert cells[3] == _mean_std([m["hr@10"] for m in metrics]) and cells[4] == "-"
        assert cells[5] == _mean_std([m["ndcg@10"] for m in metrics]) and cells[6] == "-"
        assert cells[7:11] == [_mean_std([m[name] for m in metrics]) for name in EXTRA]
        for seed, m in zip(seeds, metrics, strict=True):
            row = f"| {recipe.label} | {seed} | " + " | ".join(f"{m[n]:.4f}" for n in ("hr@10", "ndcg@10", *EXTRA))
            assert row in markdown
        for result in results:  # each run's own reproducing command is listed
            assert f"`{result['command']}`" in markdown
        config = json.loads((tmp_path / model / f"seed_{seeds[0]}" / "best_model" / "config.json").read_text())
        assert config["max_seq_len"] == 20 and config["hidden_size"] == 16
        layers[model] = (config["model_type"], config["num_hidden_layers"], config["num_negatives"])
    # the recipes reached the models: the large HSTU has 8 layers (ml-1m-hstu-large), the strong SASRec 256 negatives
    assert layers == {"hstu-large": ("hstu", 8, 128), "sasrec-strong": ("sasrec", 2, 256)}


def _record(model: str, seed: int, hr: float, ndcg: float) -> RunRecord:
    metrics = {"hr@10": hr, "ndcg@10": ndcg, **dict.fromkeys(EXTRA, 0.5)}
    preset, flags = run_flags(DATASETS["ml-1m"], model)
    return RunRecord(model, seed, preset, flags, f"out/{model}/{seed}", metrics, 7, 60.0, 61.0, "python train.py")


def _reproduction(dataset: str, records: list[RunRecord], dataset_name: str | None = None) -> Reproduction:
    return Reproduction(
        dataset=dataset,
        dataset_title=DATASETS[dataset].title,
        dataset_name=dataset_name or dataset,
        dataset_statistics={"num_users": 6040, "num_items": 3689, "num_interactions": 865611},
        protocol="leave_one_out",
        models=list(MODEL_RECIPES),
        seeds=[1, 2],
        reduced=False,
        command="python scripts/reproduce.py --dataset ml-1m",
        hardware="CPU",
        records=records,
        wall_seconds=125.0,
    )


def test_the_published_figures_sit_beside_ours():
    records = [
        _record("hstu", 1, 0.30, 0.17),
        _record("hstu", 2, 0.32, 0.18),
        _record("hstu-large", 1, 0.33, 0.19),
        _record("sasrec", 1, 0.28, 0.16),
        _record("sasrec-strong", 1, 0.29, 0.165),
    ]
    markdown = _reproduction("ml-1m", records).to_markdown()
    assert _row(markdown, "HSTU")[2:7] == ["2", "0.3100 ± 0.0141", "0.3097", "0.1750 ± 0.0071", "0.1720"]
    assert _row(markdown, "HSTU-large")[2:7] == ["1", "0.3300", "0.3294", "0.1900", "0.1893"]
    assert _row(markdown, "SASRec (paper recipe)")[3:7] == ["0.2800", "0.2853", "0.1600", "0.1603"]
    assert _row(markdown, "SASRec (strong recipe)")[3:7] == ["0.2900", "-", "0.1650", "-"]
    assert _row(markdown, "HSTU")[-2:] == ["7", "60 s"]
    assert "Published figures: Zhai et al., ICML 2024 (arXiv:2402.17152)." in markdown
    assert "Not run (yet): HSTU-large seed 2, SASRec (paper recipe) seed 2, SASRec (strong recipe) seed 2." in markdown
    assert "wall time of the whole reproduction: 2 min 05 s" in markdown
    assert "Partial data" not in markdown

    partial = _reproduction("ml-1m", records, "ml-1m (modified: 865,611 rows, not the official 1,000,209)")
    assert partial.to_markdown().startswith(
        "# Reproduction: MovieLens-1M (partial data)\n\n"
        "**Partial data**: ml-1m (modified: 865,611 rows, not the official 1,000,209). The published figures"
    )

    beauty = _reproduction("amazon-beauty-5core", [_record("sasrec-strong", 1, 0.09, 0.05)]).to_markdown()
    assert _row(beauty, "SASRec (strong recipe)")[3:7] == ["0.0900", "0.0921", "0.0500", "0.0531"]


def test_recipes_on_each_dataset():
    assert run_flags(DATASETS["ml-100k"], "hstu") == ("ml-100k-hstu", ["--preset", "ml-100k-hstu"])
    # no HSTU-large preset of its own: the architecture of the paper's dataset of the same kind
    assert run_flags(DATASETS["ml-100k"], "hstu-large")[0] == "ml-1m-hstu-large"
    assert run_flags(DATASETS["amazon-beauty-5core"], "hstu-large")[0] == "books-hstu-large"
    strong = ["--loss", "sampled_softmax", "--negative_sampling", "uniform", "--num_negatives", "256"]
    assert run_flags(DATASETS["ml-1m"], "sasrec-strong") == ("ml-1m-sasrec", ["--preset", "ml-1m-sasrec", *strong])
    assert run_flags(DATASETS["amazon-sports-5core"], "sasrec-strong")[1] == [
        "--preset",
        "sports-sasrec",
        *strong,
        "--max_seq_len",
        "50",
    ]


def test_bad_input_raises_named_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset 'ml-2m' for the reproduction; known: ml-1m, "):
        reproduce("ml-2m", tmp_path)
    with pytest.raises(ValueError, match=r"models: unknown 'bert4rec'; known: hstu, hstu-large"):
        reproduce("synthetic", tmp_path, models=["hstu", "bert4rec"])
    with pytest.raises(ValueError, match=r"models: unknown \['sasrec-large'\]"):
        parse_list("hstu,sasrec-large", "models", tuple(MODEL_RECIPES))
    with pytest.raises(ValueError, match="seeds: 'x' is not an integer"):
        parse_seeds("1,x")
    with pytest.raises(ValueError, match="seeds: '1,1' repeats a seed"):
        parse_seeds("1,1")
    assert not list(tmp_path.iterdir())  # nothing preprocessed or trained before the checks
    record = _record("hstu", 1, 0.3, 0.2)
    del record.test_metrics["hr@10"]
    with pytest.raises(ValueError, match=r"out/hstu/1 has no test hr@10 .*--top_k to include 10"):
        _reproduction("ml-1m", [record]).to_markdown()


@pytest.mark.slow
def test_reproduce_script_on_ml_100k_in_reduced_mode(tmp_path):
    raw_dir = shared_dataset("ml-100k")
    command = [sys.executable, str(REPO_ROOT / "scripts" / "reproduce.py"), "--dataset", "ml-100k"]
    command += ["--raw_dir", str(raw_dir), "--seeds", "42,43", "--reduced", "true", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    markdown = (tmp_path / "reproduction_ml-100k.md").read_text()
    assert markdown in result.stdout
    assert markdown.startswith("# Reproduction: MovieLens-100K\n\n**Reduced mode**")
    assert "- Dataset: ml-100k (943 users, 1,682 items, 100,000 interactions)" in markdown
    saved = json.loads((tmp_path / "reproduction.json").read_text())
    for model, recipe in MODEL_RECIPES.items():
        metrics = [r["test_metrics"] for r in saved["records"] if r["model"] == model]
        assert len(metrics) == 2
        cells = _row(markdown, recipe.label)
        assert cells[2:7] == [
            "2",
            _mean_std([m["hr@10"] for m in metrics]),
            "-",
            _mean_std([m["ndcg@10"] for m in metrics]),
            "-",
        ]


def test_resume_keeps_finished_runs_and_continues_a_stopped_one(tmp_path, capsys):
    options = dict(models=["hstu"], reduced=True, train_flags=TINY_FLAGS)
    first = reproduce("synthetic", tmp_path, seeds=[1, 2], **options)
    finished = (tmp_path / "hstu" / "seed_1" / "results.json").stat().st_mtime_ns
    # seed 2 stopped after its last checkpoint, before the test evaluation: no results, no record
    (tmp_path / "hstu" / "seed_2" / "results.json").unlink()
    saved = json.loads((tmp_path / "reproduction.json").read_text())
    saved["records"] = saved["records"][:1]
    (tmp_path / "reproduction.json").write_text(json.dumps(saved))
    capsys.readouterr()

    resumed = reproduce("synthetic", tmp_path, seeds=[1, 2], resume=True, **options)
    assert "Resumed from" in capsys.readouterr().out  # seed 2 continued from its checkpoint
    assert (tmp_path / "hstu" / "seed_1" / "results.json").stat().st_mtime_ns == finished
    assert [r.seed for r in resumed.records] == [1, 2]
    assert resumed.records[0] == first.records[0]
    assert resumed.records[1].test_metrics == first.records[1].test_metrics  # the same model, evaluated again
    assert resumed.wall_seconds > first.wall_seconds

    # everything done: nothing trained, the note rewritten where asked
    again = reproduce("synthetic", tmp_path, seeds=[2], resume=True, markdown_file=tmp_path / "note.md", **options)
    assert again.records == resumed.records[1:]
    assert (tmp_path / "note.md").read_text() == again.to_markdown()

    with pytest.raises(ValueError, match="records a reproduction on synthetic, not ml-100k"):
        reproduce("ml-100k", tmp_path, resume=True, raw_dir=tmp_path / "absent")
