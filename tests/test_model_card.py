"""Model cards: rendering, metadata round trips (file and fake Hub), the model-index, and the preset cards."""

import json
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard

from hf_hstu import HSTUConfig
from hf_hstu.hub.model_card import build_model_card, format_duration

MODEL_CARDS = Path(__file__).resolve().parents[1] / "model_cards"
METRICS = {
    "hr@10": 0.3097,
    "ndcg@10": 0.172,
    "hr@50": 0.5754,
    "ndcg@50": 0.2307,
    "hr@200": 0.7813,
    "ndcg@200": 0.2617,
    "mrr@10": 0.1333,
    "mrr": 0.1487,
}
COMMAND = "accelerate launch scripts/train.py --config scripts/configs/ml-1m-hstu.yaml"


def _card(**overrides) -> ModelCard:
    arguments = {
        "dataset_name": "MovieLens-1M",
        "dataset_id": "ml-1m",
        "command": COMMAND,
        "metrics": METRICS,
        "training_time_s": 3725.4,
        "hardware": "2-core CPU",
        "model_id": "org/hstu-ml1m",
        "training_config": {"learning_rate": 0.001, "per_device_batch_size": 128},
    }
    return build_model_card(HSTUConfig(num_items=3706).to_dict(), **(arguments | overrides))


def _assert_no_template_left(text: str) -> None:
    for marker in ("{{", "}}", "{%", "%}", "None"):
        assert marker not in text, marker


def test_card_with_metrics_round_trips(tmp_path):
    card = _card()
    text = str(card)
    _assert_no_template_left(text)
    assert COMMAND in text and "1 h 02 min 05 s" in text and "2-core CPU" in text
    assert '"num_items": 3706' in text and '"per_device_batch_size": 128' in text
    assert 'AutoModel.from_pretrained("org/hstu-ml1m")' in text
    assert "| HR@10 | 0.3097 |" in text and "| MRR | 0.1487 |" in text
    assert "Reported in the paper" not in text

    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.to_dict() == card.data.to_dict()
    assert loaded.data.model_name == "HSTU on MovieLens-1M"
    assert loaded.data.datasets == ["ml-1m"] and loaded.data.library_name == "transformers"
    results = loaded.data.eval_results
    assert [r.metric_type for r in results] == list(METRICS)
    assert [r.metric_name for r in results] == [name.upper() for name in METRICS]
    assert [r.metric_value for r in results] == list(METRICS.values())
    assert {(r.task_type, r.dataset_type, r.dataset_name, r.dataset_split) for r in results} == {
        ("sequential-recommendation", "ml-1m", "MovieLens-1M", "test")
    }


def test_card_without_metrics_says_so_and_labels_paper_figures():
    card = _card(metrics=None, training_time_s=None, hardware=None, model_id=None, training_config=None,
                 paper_results={"hr@10": 0.3097, "ndcg@10": 0.172})  # fmt: skip
    text = str(card)
    _assert_no_template_left(text)
    assert card.data.eval_results is None and "model-index" not in text
    assert "No figures yet" in text
    paper_section = text.split("### Reported in the paper (not measured with this code)")[1].split("## Training")[0]
    assert "HR@10 0.3097, NDCG@10 0.1720." in paper_section
    assert "0.3097" not in text.split("### Reported in the paper")[0]  # paper figures appear in their section only


def test_card_pushed_to_the_hub_reads_back(fake_hub):
    HfApi().create_repo("org/hstu-ml1m")  # the model is pushed first, the card after it
    card = _card()
    card.push_to_hub("org/hstu-ml1m")
    loaded = ModelCard.load("org/hstu-ml1m")
    assert loaded.content == card.content
    assert [r.metric_value for r in loaded.data.eval_results] == list(METRICS.values())


def test_bad_card_inputs_are_named():
    with pytest.raises(ValueError, match="model_type"):
        build_model_card({"model_type": "bert"}, dataset_name="d", dataset_id="d", command="c")
    with pytest.raises(ValueError, match="metric 'hr@10' must be a number in"):
        _card(metrics={"hr@10": float("nan")})
    with pytest.raises(ValueError, match="metric 'ndcg@10' must be a number in"):
        _card(metrics={"ndcg@10": 17.2})  # a percentage
    with pytest.raises(ValueError, match="metric 'novelty@10' must be a finite number >= 0"):
        _card(metrics={"novelty@10": float("inf")})
    with pytest.raises(ValueError, match="metric 'arp@10' must be a finite number >= 0"):
        _card(metrics={"arp@10": -3.0})
    with pytest.raises(ValueError, match="training time"):
        _card(training_time_s=-1.0)


def test_popularity_and_novelty_are_not_shares():
    card = _card(metrics=METRICS | {"arp@10": 412.5, "novelty@10": 7.25, "coverage@10": 0.31})
    assert [r.metric_value for r in card.data.eval_results][-3:] == [412.5, 7.25, 0.31]


def test_format_duration():
    assert format_duration(59.6) == "1 min 00 s"
    assert format_duration(3725.4) == "1 h 02 min 05 s"
    assert format_duration(0) == "0 min 00 s"


def test_preset_cards_hold_only_measured_figures():
    from hf_hstu.training.arguments import PRESETS

    readme = (MODEL_CARDS / "README.md").read_text()
    assert sorted(path.stem for path in MODEL_CARDS.glob("*.md") if path.name != "README.md") == sorted(PRESETS)
    assert {path.stem for path in (MODEL_CARDS / "results").glob("*.json")} <= set(PRESETS)
    for preset, values in PRESETS.items():
        path = MODEL_CARDS / f"{preset}.md"
        card = ModelCard.load(path)
        text = path.read_text()
        _assert_no_template_left(text)
        results_file = MODEL_CARDS / "results" / f"{preset}.json"
        if results_file.is_file():  # a real run's results: every figure of the card comes from them
            measured = json.loads(results_file.read_text())
            card_metrics = {result.metric_type: result.metric_value for result in card.data.eval_results}
            assert card_metrics == measured["test_metrics"], preset
            assert measured["command"] in text, preset
        else:
            assert card.data.eval_results is None, preset  # nothing measured yet: no model-index
            assert "No figures yet" in text, preset
            assert f"accelerate launch scripts/train.py --config scripts/configs/{preset}.yaml\n" in text, preset
        for key, value in values.items():
            assert f'"{key}": {json.dumps(value)}' in text, (preset, key)
        assert f"({preset}.md)" in readme, preset
