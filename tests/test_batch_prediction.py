"""Offline batch prediction (`scripts/recommend.py`): raw histories in, raw-id top-k out, equal to `Recommender`;
unknown items and users without a known item reported; bad input named; 2 processes give the single-process file."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from launch_testing import REPO_ROOT, free_port, run_in_process_group
from recommender_testing import NUM_ITEMS, tiny_model

from hf_hstu import Recommender
from hf_hstu.data import ItemVocabulary, MalformedInputError
from hf_hstu.serving.batch_prediction import BatchPredictionArguments, recommend_file

RAW_IDS = [f"B{number:04d}" for number in range(NUM_ITEMS)]  # string ids, like Amazon ASINs

# u2 has two events of an unknown item, u3 only unknown items; users appear interleaved, each in time order.
EVENTS = [
    ("u1", "B0003", 100),
    ("u2", "B0010", 50),
    ("u1", "B0007", 200),
    ("u2", "NEW-1", 60),
    ("u3", "NEW-2", 10),
    ("u2", "B0011", 70),
    ("u1", "B0001", 300),
    ("u4", "B0020", 400),
    ("u2", "NEW-1", 80),
    ("u5", "B0005", 1),
    ("u5", "B0006", 2),
]


@pytest.fixture
def checkpoint(tmp_path):
    model = tiny_model("hstu").eval()
    model.save_pretrained(tmp_path / "model")
    ItemVocabulary(RAW_IDS).save(tmp_path / "model")
    return tmp_path / "model"


def _write(tmp_path, rows, name="histories.parquet", columns=("user", "item", "timestamp")) -> Path:
    path = tmp_path / name
    frame = pd.DataFrame(rows, columns=list(columns))
    frame.to_parquet(path) if path.suffix == ".parquet" else frame.to_csv(path, index=False)
    return path


def _arguments(checkpoint, input_path, tmp_path, **overrides) -> BatchPredictionArguments:
    settings = dict(k=4, batch_size=2, request_time="last_event")
    settings.update(overrides)
    return BatchPredictionArguments(
        model=str(checkpoint), input=str(input_path), output=str(tmp_path / "recs.parquet"), **settings
    )


def test_recommendations_equal_the_recommender_and_unknowns_are_reported(checkpoint, tmp_path):
    arguments = _arguments(checkpoint, _write(tmp_path, EVENTS), tmp_path)
    summary = recommend_file(arguments)

    recs = pd.read_parquet(tmp_path / "recs.parquet")
    assert list(recs.columns) == ["user", "rank", "item", "score"]
    assert json.loads((tmp_path / "recs.summary.json").read_text()) == summary
    assert summary["rows"] == summary["events"] == len(EVENTS)
    assert summary["unknown_item_events"] == 3 and summary["unknown_item_ids"] == 2
    assert summary["unknown_items_per_user"] == {"u2": 2, "u3": 1}
    assert summary["users_without_known_items"] == ["u3"]
    assert summary["users"] == 5 and summary["users_recommended"] == 4 and summary["recommendations"] == 16

    # The same as Recommender.recommend on the known events, served at each user's last known event.
    histories = {"u1": (["B0003", "B0007", "B0001"], [100, 200, 300]), "u2": (["B0010", "B0011"], [50, 70])}
    histories.update(u4=(["B0020"], [400]), u5=(["B0005", "B0006"], [1, 2]))
    expected = Recommender.from_pretrained(checkpoint).recommend(
        [items for items, _ in histories.values()],
        [times for _, times in histories.values()],
        request_times=[times[-1] for _, times in histories.values()],
        k=4,
    )
    assert recs["user"].tolist() == [user for user in histories for _ in range(4)]
    assert recs["rank"].tolist() == [1, 2, 3, 4] * 4
    assert recs["item"].tolist() == [item for row in expected for item, _ in row]
    assert recs["score"].tolist() == pytest.approx([score for row in expected for _, score in row], abs=1e-6)


@pytest.mark.parametrize(
    "rows, name, columns, message",
    [
        (EVENTS, "h.parquet", ("user", "item", "time"), "h.parquet: no column 'timestamp'"),
        (
            [("u1", "B0001", 10), ("u1", "B0002", 12.5)],
            "h.csv",
            ("user", "item", "timestamp"),
            r"h.csv, line 3: timestamp '12.5' in column 'timestamp' is not a whole number of seconds",
        ),
        (
            [("u1", "B0001", 10), ("u2", "B0002", 5), ("u1", "B0003", 9)],
            "h.parquet",
            ("user", "item", "timestamp"),
            r"events of user 'u1' are out of time order: row 2 \(timestamp 9\) comes after row 0 \(timestamp 10\)",
        ),
    ],
)
def test_bad_input_is_named(checkpoint, tmp_path, rows, name, columns, message):
    path = _write(tmp_path, rows, name, columns)
    with pytest.raises(ValueError, match=message):
        recommend_file(_arguments(checkpoint, path, tmp_path))
    assert not (tmp_path / "recs.parquet").exists()


def test_empty_file_and_missing_request_time_are_named(checkpoint, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(MalformedInputError, match="empty.csv: the file is empty"):
        recommend_file(_arguments(checkpoint, tmp_path / "empty.csv", tmp_path))
    path = _write(tmp_path, EVENTS)
    with pytest.raises(ValueError, match="request_time is required"):
        recommend_file(_arguments(checkpoint, path, tmp_path, request_time=None))
    with pytest.raises(
        ValueError, match=r"request_time 250 is before the last event of user 'u1' \(at 300; 2 users in all\)"
    ):
        recommend_file(_arguments(checkpoint, path, tmp_path, request_time="250"))


def test_skipped_rows_and_sorting_are_counted(checkpoint, tmp_path):
    """errors='skip' drops a bad row and counts it; sort_by_time orders each user's events and counts the users."""
    shuffled = [EVENTS[2], *EVENTS[:2], *EVENTS[3:]]  # u1's 200 before its 100
    rows = [*shuffled, ("u5", "B0007", "soon")]
    summary = recommend_file(
        _arguments(checkpoint, _write(tmp_path, rows, "h.csv"), tmp_path, errors="skip", sort_by_time=True)
    )
    assert summary["skipped_rows"] == {"non-numeric timestamp": 1}
    assert summary["rows"] == len(EVENTS) + 1 and summary["users_reordered_by_time"] == 1
    sorted_recs = pd.read_parquet(tmp_path / "recs.parquet")
    recommend_file(_arguments(checkpoint, _write(tmp_path, EVENTS), tmp_path))
    pd.testing.assert_frame_equal(sorted_recs, pd.read_parquet(tmp_path / "recs.parquet"))


def test_faiss_index_searching_every_list_is_exact(checkpoint, tmp_path):
    pytest.importorskip("faiss")
    path = _write(tmp_path, EVENTS)
    recommend_file(_arguments(checkpoint, path, tmp_path))
    exact = pd.read_parquet(tmp_path / "recs.parquet")
    summary = recommend_file(_arguments(checkpoint, path, tmp_path, index="faiss", nlist=3, nprobe=3))
    approximate = pd.read_parquet(tmp_path / "recs.parquet")
    assert summary["index"] == "faiss" and summary["users_with_fewer_than_k"] == 0
    pd.testing.assert_frame_equal(approximate[["user", "rank", "item"]], exact[["user", "rank", "item"]])
    assert approximate["score"].tolist() == pytest.approx(exact["score"].tolist(), abs=1e-5)


@pytest.mark.slow
def test_two_processes_write_the_single_process_file(checkpoint, tmp_path):
    rows = [(f"user{u}", RAW_IDS[(3 * u + i) % NUM_ITEMS], 1000 * u + i) for u in range(23) for i in range(1 + u % 6)]
    rows.append(("user-new", "NEW-9", 5))
    path = _write(tmp_path, rows, "histories.csv")
    script = str(REPO_ROOT / "scripts" / "recommend.py")
    common = ["--model", str(checkpoint), "--input", str(path), "--k", "5", "--batch_size", "4"]
    common += ["--request_time", "999999"]

    single = run_in_process_group(
        [sys.executable, script, *common, "--output", str(tmp_path / "one.parquet")], tmp_path
    )
    assert single.returncode == 0, single.stderr[-5000:]
    assert json.loads(single.stdout)["users_without_known_items"] == ["user-new"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port())]
    double = run_in_process_group([*launch, script, *common, "--output", str(tmp_path / "two.parquet")], tmp_path)
    assert double.returncode == 0, double.stderr[-5000:]

    summary = json.loads((tmp_path / "two.summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["recommendations"] == 23 * 5
    assert not (tmp_path / "two.parquet.parts").exists()
    one, two = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "two.parquet")
    assert one["user"].tolist() == [f"user{u}" for u in range(23) for _ in range(5)]
    pd.testing.assert_frame_equal(one, two)


@pytest.mark.slow
def test_script_names_a_bad_row(checkpoint, tmp_path):
    path = _write(tmp_path, [("u1", "B0001", 10), ("u1", "B0002", -4)], "h.csv")
    script = str(REPO_ROOT / "scripts" / "recommend.py")
    result = run_in_process_group(
        [sys.executable, script, "--model", str(checkpoint), "--input", str(path), "--output", "r.parquet"], tmp_path
    )
    assert result.returncode != 0
    assert "h.csv, line 3: timestamp '-4' is negative" in result.stderr


def test_chunked_top_k_over_the_catalogue_equals_a_full_sort():
    """The whole-catalogue path of top_k_items (slices of the item table, no id table) in chunks of 3 items."""
    import torch

    from hf_hstu.modeling.retrieval import top_k_items

    model = tiny_model("hstu").eval()
    users = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    history = torch.tensor([[1, 2, 3], [30, 0, 0], [7, 7, 8], [0, 0, 0]])
    with torch.no_grad():
        table = model.item_table()
        ids, scores = top_k_items(users, table, model.similarity, 6, history, max_scores_per_chunk=4 * 3)
        full = users @ table.T
    full[:, 0] = float("-inf")
    full.scatter_(1, history, float("-inf"))
    expected_scores, expected_ids = full.topk(6, dim=1)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(scores, expected_scores)


def test_integer_ids_and_a_model_without_time_bias(tmp_path):
    """SASRec needs no request time; integer raw ids stay integers in the output."""
    model = tiny_model("sasrec").eval()
    model.save_pretrained(tmp_path / "model")
    ItemVocabulary(list(range(100, 100 + NUM_ITEMS))).save(tmp_path / "model")
    rows = [(7, 103, 1), (9, 110, 5), (7, 104, 2), (9, 999, 6)]
    summary = recommend_file(_arguments(tmp_path / "model", _write(tmp_path, rows), tmp_path, request_time=None))
    assert summary["unknown_items_per_user"] == {"9": 1} and summary["unknown_item_id_examples"] == [999]
    recs = pd.read_parquet(tmp_path / "recs.parquet")
    assert recs["user"].dtype == "int64" and recs["item"].dtype == "int64"
    expected = Recommender.from_pretrained(tmp_path / "model").recommend([[103, 104], [110]], k=4)
    assert recs["item"].tolist() == [item for row in expected for item, _ in row]
