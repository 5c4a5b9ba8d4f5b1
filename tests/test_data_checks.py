"""What a new user trips over: timestamp units, duplicate rows, empty files, modified official files, progress output."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import datasets
import pandas as pd
import pytest
from data_testing import shared_dataset
from test_data_sources import archive_for, make_zip
from tqdm.auto import tqdm

from hf_hstu import HSTUConfig
from hf_hstu.data import (
    MOVIELENS_ARCHIVES,
    OFFICIAL_RATINGS_FILES,
    MalformedInputError,
    ModifiedSourceWarning,
    OfficialFile,
    PreprocessingConfig,
    RemoteArchive,
    build_sequences,
    download_archive,
    load_raw_interactions,
    preprocess,
    read_interactions,
    read_movielens,
)
from hf_hstu.hub.model_card import build_model_card, dataset_display_name, dataset_metadata_id
from hf_hstu.progress import PhaseLog, progress
from hf_hstu.training.arguments import DataArguments
from hf_hstu.training.data import load_training_data

REPO_ROOT = Path(__file__).resolve().parents[1]
# the scripts import this checkout's hf_hstu, whatever copy of the package is installed
SCRIPT_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
COLUMNS = {"user_col": "u", "item_col": "i", "time_col": "t"}


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def as_records(frame: pd.DataFrame) -> list[tuple]:
    return list(frame.itertuples(index=False, name=None))


# 1. Timestamps: whole seconds, or an explicit unit; never truncated silently.


def table_sources(tmp_path, events: pd.DataFrame) -> dict:
    """The same events as a CSV, a TSV, a Parquet file, a DataFrame and a datasets.Dataset."""
    events.to_csv(tmp_path / "events.csv", index=False)
    events.to_csv(tmp_path / "events.tsv", index=False, sep="\t")
    events.to_parquet(tmp_path / "events.parquet")
    return {
        "csv": tmp_path / "events.csv",
        "tsv": tmp_path / "events.tsv",
        "parquet": tmp_path / "events.parquet",
        "DataFrame": events,
        "Dataset": datasets.Dataset.from_pandas(events),
    }


LOCATION = {  # how each input names its row 0: file and line (after the header), or the table and its row
    "csv": ("events\\.csv, line", 2),
    "tsv": ("events\\.tsv, line", 2),
    "parquet": ("events\\.parquet, row", 0),
    "DataFrame": ("DataFrame, row", 0),
    "Dataset": ("Dataset, row", 0),
}


def location(kind: str, row: int) -> str:
    label, first = LOCATION[kind]
    return f"{label} {first + row}"


@pytest.mark.parametrize("kind", list(LOCATION))
def test_fractional_timestamps_are_an_error_naming_file_line_and_column(tmp_path, kind):
    events = pd.DataFrame({"u": [1, 1, 2], "i": [5, 6, 5], "t": [978300760.0, 978300760.7, 978300800.0]})
    source = table_sources(tmp_path, events)[kind]
    message = (
        location(kind, 1)
        + r": timestamp '978300760\.7' in column 't' is not a whole number of seconds.*--timestamp_unit"
    )
    with pytest.raises(MalformedInputError, match=message):
        read_interactions(source, **COLUMNS)
    converted = read_interactions(source, **COLUMNS, timestamp_unit="s")  # explicit: floored to the second
    assert converted["timestamp"].tolist() == [978300760, 978300760, 978300800]
    skipped = read_interactions(source, **COLUMNS, errors="skip")
    assert len(skipped) == 2 and skipped.attrs["skipped_rows"] == {"fractional timestamp": 1}


@pytest.mark.parametrize("kind", list(LOCATION))
def test_millisecond_timestamps_are_detected_and_converted_only_when_told(tmp_path, kind):
    events = pd.DataFrame({"u": [1, 1, 2], "i": [5, 6, 5], "t": [978300760123, 978300761999, 978300800000]})
    source = table_sources(tmp_path, events)[kind]
    message = location(kind, 0) + r": timestamp '978300760123' in column 't' is after the year 5000 .*'ms'"
    with pytest.raises(MalformedInputError, match=message):
        read_interactions(source, **COLUMNS)
    converted = read_interactions(source, **COLUMNS, timestamp_unit="ms")
    assert converted["timestamp"].tolist() == [978300760, 978300761, 978300800]
    microseconds = events.assign(t=events["t"] * 1000)
    assert read_interactions(microseconds, **COLUMNS, timestamp_unit="us")["timestamp"].tolist() == [
        978300760,
        978300761,
        978300800,
    ]
    with pytest.raises(MalformedInputError, match=r"after the year 5000 as unix milliseconds: .*'us'"):
        read_interactions(microseconds, **COLUMNS, timestamp_unit="ms")


def test_timestamp_units_in_movielens_files_and_preprocess(tmp_path):
    path = write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978300760.7\n")
    with pytest.raises(MalformedInputError, match=r"ratings\.dat, line 2: timestamp '978300760\.7' in column"):
        read_movielens(path, "ml-1m")
    assert read_movielens(path, "ml-1m", timestamp_unit="s")["timestamp"].tolist() == [978300760, 978300760]
    events = pd.DataFrame({"u": [1, 1, 1, 2, 2, 2], "i": [1, 2, 3, 1, 2, 3], "t": [1e12, 2e12, 3e12] * 2})
    events.to_csv(tmp_path / "events.csv", index=False)
    with pytest.raises(MalformedInputError, match=r"events\.csv, line 2: .*--timestamp_unit ms"):
        preprocess("csv", raw_path=tmp_path / "events.csv", **COLUMNS)
    data = preprocess("csv", raw_path=tmp_path / "events.csv", **COLUMNS, timestamp_unit="ms")
    assert data.metadata["timestamp_range"] == [1_000_000_000, 3_000_000_000]
    with pytest.raises(ValueError, match="timestamp_unit must be one of"):
        read_interactions(events, **COLUMNS, timestamp_unit="ns")


def test_whole_seconds_and_datetimes_are_unchanged():
    events = pd.DataFrame({"u": [1, 2], "i": [1, 2], "t": [978300760.0, 978300761.0]})  # floats, but whole
    assert read_interactions(events, **COLUMNS)["timestamp"].tolist() == [978300760, 978300761]
    times = pd.to_datetime(["2001-01-01 00:00:00.5", "2001-01-01 00:00:01.0"], utc=True)
    frame = read_interactions(events.assign(t=times), **COLUMNS, timestamp_unit="ms")  # datetimes: unit unused
    assert frame["timestamp"].tolist() == [978307200, 978307201]


# 3. Empty files: a message naming the file and what is wrong.


def test_empty_files_name_the_file(tmp_path):
    write(tmp_path / "empty.csv", "")
    with pytest.raises(MalformedInputError, match=r"empty\.csv: the file is empty"):
        read_interactions(tmp_path / "empty.csv")
    with gzip.open(tmp_path / "empty.csv.gz", "wt") as handle:
        handle.write("")
    with pytest.raises(MalformedInputError, match=r"empty\.csv\.gz: the file is empty"):
        read_interactions(tmp_path / "empty.csv.gz")
    write(tmp_path / "u.data", "")
    with pytest.raises(MalformedInputError, match=r"u\.data: the file is empty"):
        load_raw_interactions("ml-100k", raw_dir=tmp_path)
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(MalformedInputError, match=r"empty\.parquet: the file is empty"):
        read_interactions(tmp_path / "empty.parquet")
    write(tmp_path / "reviews_Beauty_5.json", "")
    with pytest.raises(MalformedInputError, match=r"reviews_Beauty_5\.json: the file is empty"):
        load_raw_interactions("amazon-beauty-5core", raw_dir=tmp_path)


def test_a_header_without_rows_names_the_file(tmp_path):
    write(tmp_path / "header.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(MalformedInputError, match=r"header\.csv: no rows \(only the header line\)"):
        read_interactions(tmp_path / "header.csv")
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n")
    with pytest.raises(MalformedInputError, match=r"ratings\.csv: no rows"):
        preprocess("ml-latest-small", raw_dir=tmp_path)
    pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []}).to_parquet(tmp_path / "none.parquet")
    with pytest.raises(MalformedInputError, match=r"none\.parquet: no rows"):
        read_interactions(tmp_path / "none.parquet")
    with pytest.raises(MalformedInputError, match=r"DataFrame: no rows"):
        read_interactions(pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []}))


# 2. Duplicate rows: one explicit policy, counted in preprocessing.json.

DUPLICATED = [  # user, item, timestamp: row 3 repeats row 1 exactly; row 5 repeats the pair (1, 5) later
    (1, 5, 100),
    (1, 6, 100),
    (1, 5, 100),
    (1, 7, 200),
    (1, 5, 300),
    (2, 5, 100),
    (2, 6, 200),
    (2, 7, 300),
]


def events(rows=DUPLICATED) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_exact_duplicates_are_kept_by_default_but_counted_and_logged(caplog):
    with caplog.at_level("WARNING", logger="hf_hstu.data.preprocessing"):
        data = build_sequences(events(), PreprocessingConfig(split="paper"))
    assert data.metadata["exact_duplicates"] == 1 and data.metadata["num_interactions"] == 8
    assert data.metadata["config"]["duplicates"] == "keep" and "duplicates" not in data.metadata["dropped"]
    assert "kept 1 exact duplicate rows" in caplog.text and "--duplicates drop" in caplog.text
    clean = build_sequences(events(DUPLICATED[:2] + DUPLICATED[3:]), PreprocessingConfig(split="paper"))
    assert clean.metadata["exact_duplicates"] == 0


def test_duplicates_drop_error_first_last():
    dropped = build_sequences(events(), PreprocessingConfig(split="paper", duplicates="drop"))
    assert dropped.metadata["dropped"]["duplicates"] == 1 and dropped.metadata["exact_duplicates"] == 1
    user_1 = dropped.dataset["test"][0]
    assert dropped.item_vocabulary.decode(user_1["item_ids"] + [user_1["target_item_id"]]) == [5, 6, 7, 5]
    with pytest.raises(ValueError, match=r"DataFrame: 1 exact duplicate rows .*user 1, item 5, timestamp 100"):
        build_sequences(events(), PreprocessingConfig(split="paper", duplicates="error"))
    first = build_sequences(events(), PreprocessingConfig(split="paper", duplicates="first"))
    assert first.metadata["dropped"]["duplicates"] == 2  # the exact duplicate and the later (1, 5)
    last = build_sequences(events(), PreprocessingConfig(split="paper", duplicates="last"))
    assert last.dataset["test"][0]["timestamps"] == [100, 200] and last.dataset["test"][0]["target_timestamp"] == 300
    with pytest.raises(ValueError, match="duplicates must be one of"):
        PreprocessingConfig(duplicates="ignore")


def test_the_old_dedup_option_maps_onto_duplicates():
    with pytest.warns(FutureWarning, match="use duplicates='first'"):
        config = PreprocessingConfig(dedup="first")
    assert (config.duplicates, config.dedup) == ("first", None)


def test_duplicates_option_of_the_script(tmp_path):
    events().to_csv(tmp_path / "events.csv", index=False)
    command = [sys.executable, str(REPO_ROOT / "scripts" / "preprocess.py"), "--dataset", "csv", "--split", "paper"]
    command += ["--raw-path", str(tmp_path / "events.csv"), "--output", str(tmp_path / "out")]
    help_text = subprocess.run([*command[:2], "--help"], capture_output=True, text=True, env=SCRIPT_ENV).stdout
    assert "--duplicates {keep,drop,error,first,last}" in help_text and "--timestamp_unit {s,ms,us}" in help_text
    failed = subprocess.run([*command, "--duplicates", "error"], capture_output=True, text=True, env=SCRIPT_ENV)
    assert failed.returncode != 0 and "1 exact duplicate rows" in failed.stderr
    done = subprocess.run([*command, "--duplicates", "drop"], capture_output=True, text=True, env=SCRIPT_ENV)
    assert done.returncode == 0, done.stderr
    metadata = json.loads((tmp_path / "out" / "preprocessing.json").read_text())
    assert (metadata["exact_duplicates"], metadata["dropped"]["duplicates"], metadata["num_interactions"]) == (1, 1, 7)


# 4. Raw files on disk are compared with the official files: a modified one is never published silently.

U_DATA = "".join(
    f"{user}\t{item}\t{1 + (user + item) % 5}\t{881250949 + 60 * item}\n" for user in (1, 2) for item in (1, 2, 3)
)


def pin_as_official(monkeypatch, dataset: str, path, rows: int, **checksums) -> OfficialFile:
    official = OfficialFile(dataset, path.name, rows=rows, size=path.stat().st_size, **checksums)
    monkeypatch.setitem(OFFICIAL_RATINGS_FILES, dataset, official)
    return official


def git_blob(path) -> str:
    return subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()


def test_a_tampered_or_truncated_copy_is_flagged(tmp_path, monkeypatch):
    (tmp_path / "original").mkdir()
    original = write(tmp_path / "original" / "u.data", U_DATA)
    sha256 = hashlib.sha256(original.read_bytes()).hexdigest()
    pin_as_official(monkeypatch, "ml-100k", original, rows=6, sha256=sha256)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official file: no warning
        data = preprocess("ml-100k", raw_dir=original.parent)
    assert (data.metadata["source_verified"], data.metadata["source_modified"]) == (True, False)
    assert (data.metadata["source_rows"], data.metadata["official_rows"]) == (6, 6)

    (tmp_path / "tampered").mkdir()
    tampered = write(tmp_path / "tampered" / "u.data", U_DATA.replace("\t3\t", "\t4\t", 1))  # same size and rows
    message = r"tampered/u\.data is not the official ml-100k u\.data: sha256 [0-9a-f]{64} \(official " + sha256
    with pytest.warns(ModifiedSourceWarning, match=message):
        data = preprocess("ml-100k", raw_dir=tampered.parent)
    assert (data.metadata["source_verified"], data.metadata["source_modified"]) == (False, True)
    assert data.metadata["source_check"]["found"]["sha256"] == hashlib.sha256(tampered.read_bytes()).hexdigest()
    assert dataset_display_name("ml-100k", data.metadata) == "ml-100k (modified: 6 rows, not the official file)"

    (tmp_path / "truncated").mkdir()
    truncated = write(tmp_path / "truncated" / "u.data", "".join(U_DATA.splitlines(keepends=True)[:5]))
    with pytest.warns(ModifiedSourceWarning, match=r"rows 5 \(official 6\), size \d+ bytes \(official \d+\)"):
        data = preprocess("ml-100k", raw_path=truncated)  # raw_path is checked too
    assert (data.metadata["source_rows"], data.metadata["official_rows"]) == (5, 6)
    assert dataset_display_name("ml-100k", data.metadata) == "ml-100k (modified: 5 rows, not the official 6)"


def test_the_git_blob_id_verifies_a_file(tmp_path, monkeypatch):
    text = "".join(f"{user}::{item}::5::97830076{item}\n" for user in (1, 2) for item in (1, 2, 3))
    original = write(tmp_path / "ratings.dat", text)
    pin_as_official(monkeypatch, "ml-1m", original, rows=6, git_blob=git_blob(original))
    frame = load_raw_interactions("ml-1m", raw_dir=tmp_path)
    assert frame.attrs["source_check"]["source_verified"] is True
    write(original, text.replace("::5::", "::4::", 1))
    with pytest.warns(ModifiedSourceWarning, match=r"git_blob [0-9a-f]{40} \(official [0-9a-f]{40}\)"):
        frame = load_raw_interactions("ml-1m", raw_dir=tmp_path)
    assert frame.attrs["source_check"]["source_modified"] is True


def test_the_shared_partial_ml_1m_is_not_published_as_ml_1m(tmp_path):
    partial = shared_dataset("ml-1m") / "ratings.partial.dat"
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "ratings.dat").symlink_to(partial)  # a user's truncated ratings.dat
    expected = r"rows 865,611 \(official 1,000,209\), size 21,265,204 bytes \(official 24,594,131\)"
    with pytest.warns(ModifiedSourceWarning, match=r"ratings\.dat is not the official ml-1m ratings\.dat: " + expected):
        preprocess("ml-1m", tmp_path / "out", raw_dir=tmp_path / "raw")
    metadata = json.loads((tmp_path / "out" / "preprocessing.json").read_text())
    assert {key: metadata[key] for key in ("source_verified", "source_modified", "source_rows", "official_rows")} == {
        "source_verified": False,
        "source_modified": True,
        "source_rows": 865_611,
        "official_rows": 1_000_209,
    }
    # training names the dataset from preprocessing.json, and the model card shows that name
    data = load_training_data(DataArguments(dataset=str(tmp_path / "out")), max_seq_len=50)
    assert data.name == "ml-1m (modified: 865,611 rows, not the official 1,000,209)"
    dataset_id = dataset_metadata_id(data.metadata, data.reference)  # as the training loop names it for the card
    assert dataset_id == "ml-1m-modified"
    card = build_model_card(
        HSTUConfig(num_items=3689).to_dict(), dataset_name=data.name, dataset_id=dataset_id, command="x"
    )
    assert "on ml-1m (modified: 865,611 rows, not the official 1,000,209)" in str(card)
    assert card.data.datasets == ["ml-1m-modified"]


@pytest.mark.parametrize("dataset", ["ml-100k", "ml-latest-small"])
def test_the_shared_official_files_are_verified(dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = load_raw_interactions(dataset, raw_dir=shared_dataset(dataset))
    check = frame.attrs["source_check"]
    assert (check["source_verified"], check["source_modified"]) == (True, False)
    assert check["source_rows"] == check["official_rows"] == OFFICIAL_RATINGS_FILES[dataset].rows


def test_unmodified_datasets_keep_their_name():
    assert dataset_display_name("ml-1m", {"source_verified": True, "source_modified": False}) == "ml-1m"
    assert dataset_display_name("csv", {}) == dataset_display_name("csv") == "csv"


# 5. Progress: a bar on a terminal, one line per phase in a log file.


def test_progress_in_a_log_is_one_line_per_phase(tmp_path, capsys, caplog):
    with caplog.at_level("INFO", logger="hf_hstu.data"):
        preprocess("synthetic", tmp_path / "out")
        source = tmp_path / "archive.zip"
        source.write_bytes(b"0" * 3_000_000)
        archive = RemoteArchive("x", source.as_uri(), 3_000_000, hashlib.sha256(source.read_bytes()).hexdigest())
        download_archive(archive, tmp_path / "cache" / "x.zip")
    assert "\r" not in capsys.readouterr().err  # pytest's stderr is not a terminal: no bar redrawn
    phases = [record.getMessage() for record in caplog.records if record.name == "hf_hstu.data"]
    assert phases[:4] == ["synthetic: parse ...", "synthetic: sort, filter, group ...", "synthetic: save ..."] + [
        phases[3]
    ]
    assert phases[3].startswith("synthetic: save: done (3 step in ")
    assert phases[4] == "download archive.zip ..." and phases[5].startswith("download archive.zip: done (3.00MB in")
    assert len(phases) == 6


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_bar(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress(total=3, desc="phase", unit="step") as bar:
        bar.update(3)
    assert isinstance(bar, tqdm) and "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress(total=3, desc="phase"), PhaseLog)


def test_a_file_from_the_verified_download_is_verified_even_without_its_own_checksum(tmp_path, monkeypatch):
    source = make_zip(tmp_path / "ml-20m.zip", {"ml-20m/ratings.csv": "userId,movieId,rating,timestamp\n1,2,3.5,4\n"})
    monkeypatch.setitem(MOVIELENS_ARCHIVES, "ml-20m", archive_for(source, name="ml-20m"))
    monkeypatch.setitem(OFFICIAL_RATINGS_FILES, "ml-20m", OfficialFile("ml-20m", "ratings.csv", rows=1))
    check = load_raw_interactions("ml-20m", cache_dir=tmp_path / "cache").attrs["source_check"]
    assert (check["source_verified"], check["source_modified"]) == (True, False)
    extracted = tmp_path / "cache" / "ml-20m" / "ml-20m"
    check = load_raw_interactions("ml-20m", raw_dir=extracted).attrs["source_check"]  # the same file from disk
    assert (check["source_verified"], check["source_modified"]) == (False, False)  # only its row count is known
