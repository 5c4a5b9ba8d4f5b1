"""Raw sources: MovieLens / Amazon / generic readers, bad input, downloads and safe extraction."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import zipfile

import datasets
import numpy as np
import pandas as pd
import pytest
from data_testing import shared_dataset

from hf_hstu.data import (
    MOVIELENS_ARCHIVES,
    ChecksumError,
    DatasetNotAvailableError,
    MalformedInputError,
    ModifiedSourceWarning,
    RemoteArchive,
    UnsafeArchiveError,
    build_sequences,
    download_archive,
    fetch_movielens,
    load_raw_interactions,
    read_amazon_ratings,
    read_amazon_reviews,
    read_amazon_sequences,
    read_interactions,
    read_movielens,
    safe_extract_zip,
    verify_file,
)

ML_100K = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t377\t1\t878887116\n"
ML_1M = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
ML_LATEST = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,1,0.5,964982224\n"


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def as_records(frame: pd.DataFrame) -> list[tuple]:
    return list(frame.itertuples(index=False, name=None))


# Real datasets: the statistics every paper reports.


@pytest.mark.parametrize(
    "dataset, folder, expected",
    [
        ("ml-100k", "ml-100k", (100_000, 943, 1_682)),
        ("ml-latest-small", "ml-latest-small", (100_836, 610, 9_724)),
        ("amazon-beauty-5core", "amazon-beauty-5core", (198_502, 22_363, 12_101)),
        ("amazon-sports-5core", "amazon-sports-5core", (296_337, 35_598, 18_357)),
    ],
)
def test_real_dataset_statistics(dataset, folder, expected):
    data = build_sequences(load_raw_interactions(dataset, raw_dir=shared_dataset(folder)), dataset_name=dataset)
    stats = data.metadata
    assert (stats["num_interactions"], stats["num_users"], stats["num_items"]) == expected
    assert stats["num_rows"] == {"train": expected[1], "validation": expected[1], "test": expected[1]}
    assert len(data.item_vocabulary) == expected[2]


def test_ml_1m_parser_at_scale_on_the_partial_file():
    # The shared ml-1m ratings are partial (865,611 of 1,000,209 lines): a scale test of the parser only.
    with pytest.warns(ModifiedSourceWarning, match="not the official ml-1m"):
        frame = load_raw_interactions("ml-1m", raw_path=shared_dataset("ml-1m") / "ratings.partial.dat")
    assert len(frame) == 865_611
    assert (frame["user_id"].nunique(), frame["item_id"].nunique()) == (6_040, 3_689)
    assert (frame["timestamp"].min(), frame["timestamp"].max()) == (956_703_932, 1_046_454_590)
    assert np.bincount(frame["rating"].astype(int))[1:].tolist() == [38_406, 74_253, 177_671, 348_971, 226_310]
    assert as_records(frame.head(2)) == [(1, 1193, 978300760, 5.0), (1, 661, 978302109, 3.0)]


def test_amazon_sequence_files_agree_with_their_flat_csv():
    folder = shared_dataset("amazon-beauty-5core")
    sequences = read_amazon_sequences(folder / "Beauty_item_org_rank.txt")
    flat = read_interactions(folder / "interactions.csv.gz")
    pd.testing.assert_frame_equal(sequences, flat)


# Formats, on small files.


def test_movielens_formats(tmp_path):
    assert as_records(read_movielens(write(tmp_path / "u.data", ML_100K), "ml-100k")) == [
        (196, 242, 881250949, 3.0),
        (186, 302, 891717742, 3.0),
        (196, 377, 878887116, 1.0),
    ]
    assert as_records(read_movielens(write(tmp_path / "ratings.dat", ML_1M), "ml-1m")) == [
        (1, 1193, 978300760, 5.0),
        (1, 661, 978302109, 3.0),
        (2, 1193, 978298413, 4.0),
    ]
    assert as_records(read_movielens(write(tmp_path / "ratings.csv", ML_LATEST), "ml-latest-small")) == [
        (1, 1, 964982703, 4.0),
        (1, 3, 964981247, 4.5),
        (2, 1, 964982224, 0.5),
    ]


@pytest.mark.filterwarnings("ignore::hf_hstu.data.ModifiedSourceWarning")  # small stand-ins for the official files
def test_raw_dir_accepts_the_files_or_a_dataset_subfolder(tmp_path):
    write(tmp_path / "u.data", ML_100K)
    (tmp_path / "nested" / "ml-1m").mkdir(parents=True)
    write(tmp_path / "nested" / "ml-1m" / "ratings.dat", ML_1M)
    assert len(load_raw_interactions("ml-100k", raw_dir=tmp_path)) == 3
    assert len(load_raw_interactions("ml-1m", raw_dir=tmp_path / "nested")) == 3
    with pytest.raises(DatasetNotAvailableError, match=r"No ratings\.csv for ml-20m in .*Put the extracted files"):
        load_raw_interactions("ml-20m", raw_dir=tmp_path)


def test_amazon_ratings_csv_keeps_string_ids(tmp_path):
    write(tmp_path / "ratings_Books.csv", "A1,0001,5.0,1100000000\nA2,0001,3.0,1200000000\nA1,B0X,4.0,1000000000\n")
    frame = load_raw_interactions("amazon-books", raw_dir=tmp_path)
    assert as_records(frame) == [
        ("A1", "0001", 1100000000, 5.0),
        ("A2", "0001", 1200000000, 3.0),
        ("A1", "B0X", 1000000000, 4.0),
    ]
    with pytest.raises(DatasetNotAvailableError, match="ratings_Books.csv.*not downloaded automatically"):
        load_raw_interactions("amazon-books")
    bad = write(tmp_path / "bad.csv", "A1,0001,5.0,1100000000\nA2,0001,6.0,1200000000\n")
    with pytest.raises(MalformedInputError, match=r"bad\.csv, line 2: rating '6.0' is off the scale"):
        read_amazon_ratings(bad)


def test_amazon_review_json(tmp_path):
    records = [
        {"reviewerID": "U2", "asin": "I1", "overall": 5.0, "unixReviewTime": 1400000000, "reviewText": "ok"},
        {"reviewerID": "U1", "asin": "I2", "overall": 2.0, "unixReviewTime": 1300000000, "summary": "x"},
    ]
    path = tmp_path / "reviews_Beauty_5.json.gz"
    with gzip.open(path, "wt") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    expected = [("U2", "I1", 1400000000, 5.0), ("U1", "I2", 1300000000, 2.0)]
    assert as_records(load_raw_interactions("amazon-beauty-5core", raw_dir=tmp_path)) == expected
    assert as_records(read_amazon_reviews(path)) == expected

    broken = tmp_path / "broken.json"
    write(broken, json.dumps(records[0]) + "\n{not json\n" + json.dumps(records[1]) + "\n")
    with pytest.raises(MalformedInputError, match=r"broken\.json, line 2: invalid JSON"):
        read_amazon_reviews(broken)
    skipped = read_amazon_reviews(broken, errors="skip")
    assert as_records(skipped) == expected
    assert skipped.attrs["skipped_rows"] == {"unparsable line": 1}


def test_amazon_sequence_files(tmp_path):
    write(tmp_path / "Toys_item_org_rank.txt", "1 5 6 7\n2 6 5\n")
    write(tmp_path / "Toys_time_org_rank.txt", "1 10 20 20\n2 30 40\n")
    frame = load_raw_interactions("amazon-toys-5core", raw_dir=tmp_path)
    assert as_records(frame) == [(1, 5, 10), (1, 6, 20), (1, 7, 20), (2, 6, 30), (2, 5, 40)]

    write(tmp_path / "Toys_time_org_rank.txt", "1 10 20 20\n2 30\n")
    with pytest.raises(MalformedInputError, match=r"Toys_item_org_rank\.txt.*line 2: the two files disagree"):
        read_amazon_sequences(tmp_path / "Toys_item_org_rank.txt")
    skipped = read_amazon_sequences(tmp_path / "Toys_item_org_rank.txt", errors="skip")
    assert len(skipped) == 3 and skipped.attrs["skipped_rows"] == {"mismatched or empty line": 1}


def test_generic_tables(tmp_path):
    events = pd.DataFrame(
        {"u": ["a", "b", "a"], "i": [10, 11, 12], "t": [100, 50, 100], "r": [1.0, 2.0, 3.0], "other": [0, 0, 0]}
    )
    expected = [("a", 10, 100, 1.0), ("b", 11, 50, 2.0), ("a", 12, 100, 3.0)]
    columns = {"user_col": "u", "item_col": "i", "time_col": "t", "rating_col": "r"}
    events.to_csv(tmp_path / "events.csv", index=False)
    events.to_csv(tmp_path / "events.tsv.gz", index=False, sep="\t")
    events.to_parquet(tmp_path / "events.parquet")
    sources = [
        tmp_path / "events.csv",
        tmp_path / "events.tsv.gz",
        tmp_path / "events.parquet",
        events,
        datasets.Dataset.from_pandas(events),
    ]
    for source in sources:
        assert as_records(load_raw_interactions("csv", raw_path=source, **columns)) == expected, source
    with pytest.raises(ValueError, match=r"events\.csv: no column 'user_id'"):
        read_interactions(tmp_path / "events.csv")


def test_generic_ids_and_timestamps_are_normalised():
    events = pd.DataFrame(
        {
            "user_id": ["7", "12"],  # canonical integers -> int
            "item_id": ["007", "12"],  # a leading zero -> the ids stay strings
            "timestamp": pd.to_datetime(["1970-01-01 00:01:40.9", "2001-09-09 01:46:40.0"], utc=True),
        }
    )
    frame = read_interactions(events)
    assert as_records(frame) == [(7, "007", 100), (12, "12", 1_000_000_000)]
    assert frame["user_id"].dtype == np.int64


# Bad input: an error naming the file and line, or errors="skip" counting what it dropped.


@pytest.mark.parametrize(
    "version, text, message",
    [
        ("ml-1m", "1::2::3::4\n1,2,3,4\n", r"ratings\.dat, line 2: expected 'UserID::MovieID::Rating::Timestamp'"),
        ("ml-1m", "1::2::3::4\n1::2::3:4:\n", r"line 2: expected .* found '4' between two fields"),
        ("ml-100k", "1\t2\t3\t4\n1\t2\t3\n", r"u\.data, line 2: expected 'user<TAB>item<TAB>rating<TAB>timestamp'"),
        ("ml-100k", "1\t2\t3\t4\n\n", r"line 2: missing user_id"),
        ("ml-100k", "1\t2\t3\t4\n1\tx\t3\t4\n", r"line 2: item_id 'x' is not an integer"),
        ("ml-100k", "1\t2\t3\t4\n1\t2.5\t3\t4\n", r"line 2: item_id '2.5' is not an integer"),
        ("ml-100k", "1\t2\t3\t4\n1\t2\t3\tyesterday\n", r"line 2: timestamp 'yesterday' is not a number"),
        ("ml-100k", "1\t2\t3\t4\n1\t2\t3\t-5\n", r"line 2: timestamp '-5' is negative"),
        (
            "ml-100k",
            "1\t2\t3\t4\n1\t2\t7\t5\n",
            r"line 2: rating '7' is off the scale \(expected 1\.\.5 in steps of 1\)",
        ),
        ("ml-latest-small", "userId,movieId,rating,timestamp\n1,2,3.5,4\n1,2,3.25,4\n", r"line 3: rating '3.25'"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, version, text, message):
    path = write(tmp_path / {"ml-1m": "ratings.dat", "ml-100k": "u.data"}.get(version, "ratings.csv"), text)
    with pytest.raises(MalformedInputError, match=message):
        read_movielens(path, version)
    skipped = read_movielens(path, version, errors="skip")
    assert len(skipped) == 1 and sum(skipped.attrs["skipped_rows"].values()) == 1


def test_first_bad_line_is_reported_and_skip_counts_by_reason(tmp_path):
    path = write(tmp_path / "u.data", "1\t2\t3\t4\n1\t2\t9\t4\n1\t2\t3\n1\tx\t3\t4\n5\t6\t5\t7\n")
    with pytest.raises(MalformedInputError, match=r"line 2: rating '9'"):
        read_movielens(path, "ml-100k")
    frame = read_movielens(path, "ml-100k", errors="skip")
    assert as_records(frame) == [(1, 2, 4, 3.0), (5, 6, 7, 5.0)]
    assert frame.attrs["skipped_rows"] == {"unparsable line": 1, "non-integer item_id": 1, "rating off the scale": 1}


def test_malformed_csv_with_a_header(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp\n1,2,3\n1,2\n1,3,x\n4,5,6\n")
    with pytest.raises(
        MalformedInputError, match=r"events\.csv, line 3: expected 'user_id,item_id,timestamp', got '1,2'"
    ):
        read_interactions(path)
    frame = read_interactions(path, errors="skip")
    assert as_records(frame) == [(1, 2, 3), (4, 5, 6)]
    assert frame.attrs["skipped_rows"] == {"unparsable line": 1, "non-numeric timestamp": 1}


def test_malformed_rows_in_tables_name_the_row():
    events = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [1, None, 3], "timestamp": [1, 2, 3]})
    with pytest.raises(MalformedInputError, match=r"DataFrame, row 1: missing item_id"):
        read_interactions(events)


def test_unknown_dataset_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset 'ml-2m'"):
        load_raw_interactions("ml-2m")
    with pytest.raises(ValueError, match="needs raw_path"):
        load_raw_interactions("csv")
    with pytest.raises(ValueError, match='errors must be "raise" or "skip"'):
        read_movielens(write(tmp_path / "u.data", ML_100K), "ml-100k", errors="ignore")


# Downloads (file:// URLs only: never the network) and safe extraction.


def make_zip(path, members: dict[str, str]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def archive_for(path, **overrides) -> RemoteArchive:
    data = path.read_bytes()
    fields = {
        "name": "ml-100k",
        "url": path.as_uri(),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
    }
    return RemoteArchive(**{**fields, **overrides})


def test_pinned_archives_are_the_official_grouplens_zips():
    assert MOVIELENS_ARCHIVES["ml-1m"].md5 == "c4d9eecfca2ab87c1945afe126590906"
    for name, archive in MOVIELENS_ARCHIVES.items():
        assert archive.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert len(archive.sha256) == 64 and archive.size > 0


def test_download_verifies_the_checksum_and_never_keeps_a_bad_file(tmp_path):
    source = make_zip(tmp_path / "source.zip", {"ml-100k/u.data": ML_100K})
    destination = tmp_path / "cache" / "ml-100k.zip"
    assert download_archive(archive_for(source), destination) == destination
    assert destination.read_bytes() == source.read_bytes()

    bad = tmp_path / "cache" / "bad.zip"
    with pytest.raises(ChecksumError, match="sha256"):
        download_archive(archive_for(source, sha256="0" * 64), bad)
    with pytest.raises(ChecksumError, match="md5"):
        download_archive(archive_for(source, md5="0" * 32), bad)
    with pytest.raises(ChecksumError, match="size"):
        download_archive(archive_for(source, size=1), bad)
    assert sorted(path.name for path in bad.parent.iterdir()) == ["ml-100k.zip"]


def test_offline_error_says_where_to_put_the_files(tmp_path):
    missing = archive_for(make_zip(tmp_path / "x.zip", {}), url=(tmp_path / "absent.zip").as_uri())
    with pytest.raises(DatasetNotAvailableError, match=r"Could not download .*put it at .*ml-100k\.zip"):
        download_archive(missing, tmp_path / "cache" / "ml-100k.zip")
    assert not (tmp_path / "cache" / "ml-100k.zip").exists()


@pytest.mark.filterwarnings("ignore::hf_hstu.data.ModifiedSourceWarning")
def test_fetch_movielens_downloads_verifies_and_extracts_once(tmp_path, monkeypatch):
    source = make_zip(tmp_path / "ml-100k.zip", {"ml-100k/u.data": ML_100K, "ml-100k/README": "x"})
    monkeypatch.setitem(MOVIELENS_ARCHIVES, "ml-100k", archive_for(source))
    cache = tmp_path / "cache"
    frame = load_raw_interactions("ml-100k", cache_dir=cache)
    assert len(frame) == 3 and (cache / "ml-100k" / "ml-100k" / "u.data").is_file()
    source.unlink()  # a second call uses the cache, not the URL
    assert fetch_movielens("ml-100k", cache) == cache / "ml-100k"

    other = tmp_path / "other"
    other.mkdir()
    (other / "ml-100k.zip").write_bytes(b"corrupted")  # a cached zip that fails its checksum is refused
    with pytest.raises(ChecksumError, match=r"size 9 bytes.*Delete or replace .*ml-100k\.zip; it is not used"):
        fetch_movielens("ml-100k", other)
    assert not (other / "ml-100k").exists()


@pytest.mark.parametrize("member", ["../evil", "ml-100k/../../evil", "/etc/evil", "C:/evil"])
def test_safe_extract_refuses_path_traversal(tmp_path, member):
    archive = make_zip(tmp_path / "evil.zip", {"ok.txt": "fine", member: "gotcha"})
    target = tmp_path / "out" / "target"
    with pytest.raises(UnsafeArchiveError, match="refusing to extract"):
        safe_extract_zip(archive, target)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


def test_safe_extract_refuses_links_and_extracts_good_archives(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        link = zipfile.ZipInfo("data/link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        handle.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError):
        safe_extract_zip(archive, tmp_path / "links")
    good = make_zip(tmp_path / "good.zip", {"a/b.txt": "hello"})
    target = safe_extract_zip(good, tmp_path / "good")
    assert (target / "a" / "b.txt").read_text() == "hello"
    with pytest.raises(FileExistsError, match="refusing to extract"):
        safe_extract_zip(good, target)
    assert sorted(os.listdir(tmp_path)) == ["good", "good.zip", "link.zip"]


def test_verify_file(tmp_path):
    path = make_zip(tmp_path / "a.zip", {"x": "y"})
    verify_file(path, archive_for(path))
    with pytest.raises(ChecksumError, match="a.zip"):
        verify_file(path, archive_for(path, md5="f" * 32))
