"""Readers that turn raw interaction sources into one normalised pandas DataFrame.

Every reader returns one row per interaction, in the source's row order (the tie-breaker of the stable sort),
with columns ``user_id`` and ``item_id`` (int64, or strings for string ids), ``timestamp`` (int64 unix seconds)
and ``rating`` (float64, only when the source has ratings).
``frame.attrs["source"]`` names the source and ``frame.attrs["skipped_rows"]`` counts, by reason, the rows
dropped with ``errors="skip"``.

Malformed rows (wrong separator, missing field, non-integer id, non-numeric or negative timestamp, rating off the
scale) raise :class:`MalformedInputError` naming the file and line (or row, for tables without lines), or are
dropped and counted with ``errors="skip"``. So are timestamps in another unit than whole seconds, never truncated
silently: a fraction of a second, or a value too large for unix seconds (after the year 5000: milliseconds or
microseconds), is an error naming the file, line and column unless ``timestamp_unit`` says how to convert it
(``"s"``: seconds, fractions floored; ``"ms"``, ``"us"``: milli- and microseconds, floored to the second).
Datetime columns are converted whatever the unit. An empty file, or one with a header and no rows, is an error
naming the file.

A MovieLens ratings file read from disk is compared with the official file (rows, size, checksums:
:func:`~hf_hstu.data.download.check_official_file`); the result is ``frame.attrs["source_check"]``, and a
difference is a :class:`~hf_hstu.data.download.ModifiedSourceWarning`.

Parsing is vectorised with pyarrow; only a file that fails the fast typed parse is read a second time, as text, to
locate its bad lines.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from ._segments import concat_ranges
from .download import (
    OFFICIAL_RATINGS_FILES,
    DatasetNotAvailableError,
    ModifiedSourceWarning,
    check_official_file,
    fetch_movielens,
)
from .synthetic import make_synthetic_interactions

logger = logging.getLogger(__name__)

Errors = Literal["raise", "skip"]
TimestampUnit = Literal["s", "ms", "us"]
TIMESTAMP_UNITS: dict[str, int] = {"s": 1, "ms": 1_000, "us": 1_000_000}  # unit -> units per second
# Unix seconds after this are past the year 5000: such "seconds" are milliseconds (or microseconds).
MAX_PLAUSIBLE_SECONDS = 10**11
PathLike = str | os.PathLike

MOVIELENS_RATINGS_FILES = {
    "ml-100k": "u.data",
    "ml-1m": "ratings.dat",
    "ml-20m": "ratings.csv",
    "ml-latest-small": "ratings.csv",
}

# Short names of the 2014 McAuley Amazon categories: ``amazon-<short>`` reads ``ratings_<Category>.csv`` and
# ``amazon-<short>-5core`` reads ``reviews_<Category>_5.json(.gz)`` or ``<Short>_{item,time}_org_rank.txt``.
AMAZON_CATEGORIES = {
    "books": "Books",
    "beauty": "Beauty",
    "sports": "Sports_and_Outdoors",
    "toys": "Toys_and_Games",
    "electronics": "Electronics",
    "movies": "Movies_and_TV",
    "cds": "CDs_and_Vinyl",
    "clothing": "Clothing_Shoes_and_Jewelry",
    "home": "Home_and_Kitchen",
    "kindle": "Kindle_Store",
    "health": "Health_and_Personal_Care",
    "phones": "Cell_Phones_and_Accessories",
    "tools": "Tools_and_Home_Improvement",
    "games": "Video_Games",
    "grocery": "Grocery_and_Gourmet_Food",
    "automotive": "Automotive",
    "office": "Office_Products",
    "garden": "Patio_Lawn_and_Garden",
    "pets": "Pet_Supplies",
    "baby": "Baby",
    "music": "Digital_Music",
    "instruments": "Musical_Instruments",
}

GENERIC_SOURCES = ("csv", "table")

_AMAZON_HELP = (
    "Amazon files are not downloaded automatically: get them from "
    "https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html and pass their folder as raw_dir (--raw-dir) "
    "or the file itself as raw_path (--raw-path)."
)


class MalformedInputError(ValueError):
    """A row of the input is malformed; the message names the file and line (or row)."""


@dataclass(frozen=True)
class FieldRules:
    """What a valid row looks like.

    Args:
        integer_ids: ids must be integers (MovieLens); otherwise ids stay strings unless all are canonical integers.
        rating_range: inclusive (low, high) scale of the ratings, or None to accept any non-negative number.
        rating_step: ratings must be multiples of this (1 for whole stars, 0.5 for half stars), or None.
    """

    integer_ids: bool = False
    rating_range: tuple[float, float] | None = None
    rating_step: float | None = None


_MOVIELENS_RULES = FieldRules(integer_ids=True, rating_range=(1, 5), rating_step=1)
_MOVIELENS_HALF_STAR_RULES = FieldRules(integer_ids=True, rating_range=(0.5, 5), rating_step=0.5)
_AMAZON_RULES = FieldRules(rating_range=(1, 5), rating_step=1)


@dataclass
class _Problem:
    reason: str
    mask: np.ndarray  # (num_rows,) bool
    describe: Callable[[int], str]  # row position -> message


def _is_text(series: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(series.dtype) or series.dtype == object


def _missing(series: pd.Series) -> np.ndarray:
    missing = series.isna().to_numpy(dtype=bool)
    if _is_text(series):
        missing = missing | (series.astype("string").str.strip() == "").to_numpy(dtype=bool, na_value=True)
    return missing


def _numbers(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, mask of present values that are not finite numbers)."""
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = pd.to_numeric(series.astype("string"), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return values, ~np.isfinite(values) & ~_missing(series)


def _integers(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, mask of present values that are not integers)."""
    if pd.api.types.is_integer_dtype(series.dtype) and not series.hasnans:
        return series.to_numpy(dtype=np.int64), np.zeros(len(series), dtype=bool)
    if _is_text(series):
        text = series.astype("string").str.strip()
        valid = text.str.fullmatch(r"[+-]?[0-9]+").to_numpy(dtype=bool, na_value=False)
        digits = text.where(valid, "0")
        try:  # pyarrow's parse is ~10x faster than pandas'; it refuses a leading "+" and values beyond int64
            values = pc.cast(pc.replace_substring_regex(pa.array(digits, pa.string()), r"^\+", ""), pa.int64())
            values = values.to_numpy()
        except pa.ArrowInvalid:
            values = pd.to_numeric(digits).to_numpy(dtype=np.int64)
        return values, ~valid & ~_missing(series)
    numbers, _ = _numbers(series)
    whole = np.isfinite(numbers) & (numbers == np.floor(numbers))
    return np.where(whole, numbers, 0).astype(np.int64), ~whole & ~_missing(series)


def _ids(series: pd.Series, rules: FieldRules) -> tuple[np.ndarray | pd.api.extensions.ExtensionArray, np.ndarray]:
    """Ids as int64 or strings (string ids that all read as canonical integers become int64), and the invalid mask."""
    if rules.integer_ids or pd.api.types.is_numeric_dtype(series.dtype):
        return _integers(series)
    text = series.astype("string").str.strip()
    if text.str.fullmatch(r"0|-?[1-9][0-9]*").to_numpy(dtype=bool, na_value=True).all():
        return _integers(text)
    return text.array, np.zeros(len(series), dtype=bool)


@dataclass
class _Timestamps:
    """Timestamps converted to int64 unix seconds (0 where invalid), with the masks of the invalid values."""

    seconds: np.ndarray
    not_numbers: np.ndarray
    negative: np.ndarray
    fractional: np.ndarray  # a fraction of a second without a timestamp_unit
    too_large: np.ndarray  # after MAX_PLAUSIBLE_SECONDS once converted


def _timestamps(series: pd.Series, unit: TimestampUnit | None) -> _Timestamps:
    """Numbers in ``unit`` (None: whole seconds, where a fraction is invalid) or datetimes -> unix seconds."""
    if unit is not None and unit not in TIMESTAMP_UNITS:
        raise ValueError(f"timestamp_unit must be one of {sorted(TIMESTAMP_UNITS)} or None, got {unit!r}")
    per_second = TIMESTAMP_UNITS[unit or "s"]
    no = np.zeros(len(series), dtype=bool)
    if pd.api.types.is_integer_dtype(series.dtype) and not series.hasnans:
        values = series.to_numpy(dtype=np.int64)
        negative = values < 0
        seconds = np.where(negative, 0, values // per_second)
        too_large = seconds > MAX_PLAUSIBLE_SECONDS
        return _Timestamps(np.where(too_large, 0, seconds), no, negative, no, too_large)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        since_epoch = pd.to_datetime(series, utc=True) - pd.Timestamp(0, tz="UTC")
        numbers = (since_epoch // pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)
        not_numbers, per_second, fractional = no, 1, no
    else:
        numbers, not_numbers = _numbers(series)
        whole = np.isfinite(numbers) & (numbers == np.floor(numbers))
        fractional = np.isfinite(numbers) & ~whole if unit is None else no
    finite = np.isfinite(numbers)
    negative = finite & (numbers < 0)
    too_large = finite & ~negative & (numbers / per_second > MAX_PLAUSIBLE_SECONDS)
    valid = finite & ~negative & ~too_large & ~fractional
    seconds = np.floor(np.where(valid, numbers, 0) / per_second).astype(np.int64)
    return _Timestamps(seconds, not_numbers, negative, fractional, too_large)


def _unit_hint(value: str, unit: TimestampUnit | None) -> str:
    """What to pass for a timestamp too large for ``unit``: the first larger unit that makes it plausible."""
    try:
        number = float(value)
    except ValueError:
        number = float("inf")
    for candidate, per_second in TIMESTAMP_UNITS.items():
        if per_second > TIMESTAMP_UNITS[unit or "s"] and number / per_second <= MAX_PLAUSIBLE_SECONDS:
            return f"pass timestamp_unit={candidate!r} (--timestamp_unit {candidate}) if it is in that unit"
    return f"no unit of {sorted(TIMESTAMP_UNITS)} makes it a plausible time"


def _validate(
    raw: pd.DataFrame,
    rules: FieldRules,
    where: str,
    errors: Errors,
    line_of: Callable[[int], int] | None = None,
    unparsed: Sequence[tuple[int, str]] = (),
    extra: Sequence[_Problem] = (),
    timestamp_unit: TimestampUnit | None = None,
    columns: Mapping[str, str] | None = None,
    row_offset: int = 0,
) -> pd.DataFrame:
    """Check and convert ``raw`` (columns user_id, item_id, timestamp[, rating]) into the normalised frame.

    Args:
        line_of: row position -> 1-based line of the file, or None to name rows by their position.
        unparsed: (line, message) of lines the parser could not split into fields (already left out of ``raw``).
        extra: problems found by the caller (e.g. wrong separators).
        timestamp_unit: unit of numeric timestamps (None: whole unix seconds).
        columns: normalised column -> the source's column name, for messages (default: the same name).
        row_offset: position of ``raw``'s first row in its table, for messages naming rows (a chunk of a table).
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f'errors must be "raise" or "skip", got {errors!r}')
    if len(raw) == 0 and not unparsed:
        raise MalformedInputError(f"{where}: no rows")

    def shown(column: str) -> Callable[[int], str]:
        """Row -> the raw value, quoted as it appeared (numpy scalars shown as plain numbers)."""

        def show(row: int) -> str:
            value = raw[column].iloc[row]
            return repr(str(value.item() if isinstance(value, np.generic) else value))

        return show

    problems = list(extra)
    for column in raw.columns:
        problems.append(_Problem(f"missing {column}", _missing(raw[column]), lambda row, c=column: f"missing {c}"))
    converted = {}
    for column in ("user_id", "item_id"):
        converted[column], invalid = _ids(raw[column], rules)
        show = shown(column)
        problems.append(
            _Problem(f"non-integer {column}", invalid, lambda row, c=column, s=show: f"{c} {s(row)} is not an integer")
        )
    times = _timestamps(raw["timestamp"], timestamp_unit)
    converted["timestamp"] = times.seconds
    show = shown("timestamp")
    in_column = f"in column {(columns or {}).get('timestamp', 'timestamp')!r}"
    problems.append(
        _Problem("non-numeric timestamp", times.not_numbers, lambda row: f"timestamp {show(row)} is not a number")
    )
    problems.append(_Problem("negative timestamp", times.negative, lambda row: f"timestamp {show(row)} is negative"))
    problems.append(
        _Problem(
            "fractional timestamp",
            times.fractional,
            lambda row: (
                f"timestamp {show(row)} {in_column} is not a whole number of seconds; pass timestamp_unit "
                "(--timestamp_unit s|ms|us) to convert it (floored to the second)"
            ),
        )
    )
    unit_name = {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}[timestamp_unit or "s"]
    problems.append(
        _Problem(
            "timestamp too large",
            times.too_large,
            lambda row: (
                f"timestamp {show(row)} {in_column} is after the year 5000 as unix {unit_name}: "
                f"{_unit_hint(str(raw['timestamp'].iloc[row]), timestamp_unit)}"
            ),
        )
    )
    if "rating" in raw.columns:
        ratings, not_numbers = _numbers(raw["rating"])
        finite = np.isfinite(ratings)
        off_scale, scale = finite & (ratings < 0), "a non-negative number"
        if rules.rating_range is not None:
            low, high = rules.rating_range
            off_scale |= finite & ((ratings < low) | (ratings > high))
            scale = f"{low:g}..{high:g}"
        if rules.rating_step is not None:
            off_scale |= finite & (np.mod(ratings, rules.rating_step) != 0)
            scale += f" in steps of {rules.rating_step:g}"
        converted["rating"] = ratings
        rating_shown = shown("rating")
        problems.append(
            _Problem("non-numeric rating", not_numbers, lambda row: f"rating {rating_shown(row)} is not a number")
        )
        problems.append(
            _Problem(
                "rating off the scale",
                off_scale,
                lambda row: f"rating {rating_shown(row)} is off the scale (expected {scale})",
            )
        )

    def position(row: int) -> int:
        return line_of(row) if line_of is not None else row + row_offset

    keep = np.ones(len(raw), dtype=bool)
    skipped: dict[str, int] = {}
    if errors == "raise":
        found = [(line, f"line {line}: {message}") for line, message in unparsed]
        for problem in problems:
            hits = np.flatnonzero(problem.mask)
            if len(hits):
                row = int(hits[0])
                label = f"line {line_of(row)}" if line_of is not None else f"row {row + row_offset}"
                found.append((position(row), f"{label}: {problem.describe(row)}"))
        if found:
            first = min(range(len(found)), key=lambda index: (found[index][0], index))  # ties: in check order
            raise MalformedInputError(f'{where}, {found[first][1]} (pass errors="skip" to drop malformed rows)')
    else:
        if unparsed:
            skipped["unparsable line"] = len(unparsed)
        for problem in problems:
            dropped = problem.mask & keep
            if dropped.any():
                skipped[problem.reason] = skipped.get(problem.reason, 0) + int(dropped.sum())
                keep &= ~problem.mask
        if skipped:
            logger.warning("%s: skipped %d malformed rows %s", where, sum(skipped.values()), skipped)
    frame = pd.DataFrame(converted, copy=False)
    if not keep.all():
        frame = frame[keep].reset_index(drop=True)
    frame.attrs["source"] = where
    frame.attrs["skipped_rows"] = skipped
    return frame


def _require_columns(where: str, wanted: Iterable[str], available: list[str], listing: str) -> None:
    """ValueError naming the source and the first of `wanted` that `available` lacks."""
    absent = [column for column in wanted if column not in available]
    if absent:
        raise ValueError(f"{where}: no column {absent[0]!r} ({listing} {available})")


def _require_content(path: Path) -> None:
    """MalformedInputError naming ``path`` when it holds nothing (after decompression, for .gz / .bz2)."""
    with pa.input_stream(str(path), compression="detect") as stream:
        if not stream.read(1):
            raise MalformedInputError(f"{path}: the file is empty (no header, no rows)")


def _delimited_parse_options(
    path: Path, delimiter: str, fields: dict[str, str], names: list[str] | None, unparsed: list[pa_csv.InvalidRow]
) -> pa_csv.ParseOptions:
    """Parse options that append the lines the parser cannot split to ``unparsed``; checks that ``path`` has content
    and, when it has a header line (``names`` None), the columns of ``fields``."""
    _require_content(path)

    def remember(row: pa_csv.InvalidRow) -> str:
        unparsed.append(row)
        return "skip"

    parse_options = pa_csv.ParseOptions(
        delimiter=delimiter, quote_char=False if names else '"', ignore_empty_lines=False, invalid_row_handler=remember
    )
    if names is None:
        header = pa_csv.open_csv(path, parse_options=parse_options).schema.names
        _require_columns(str(path), fields.values(), header, "the header has")
        unparsed.clear()
    return parse_options


def _read_delimited(
    path: PathLike,
    *,
    delimiter: str,
    fields: dict[str, str],
    types: dict[str, pa.DataType],
    rules: FieldRules,
    errors: Errors,
    names: list[str] | None = None,
    layout: str,
    separators: Sequence[str] = (),
    timestamp_unit: TimestampUnit | None = None,
) -> pd.DataFrame:
    """Read a delimited text file (optionally gzip/bz2 compressed, by extension).

    Args:
        fields: normalised column name -> column name in the file.
        types: file column -> pyarrow type for the fast typed parse.
        names: the file's column names when it has no header line (None: the first line is the header).
        layout: how a valid line looks, for error messages.
        separators: file columns that must be empty (lets ``a::b`` be read as ``a``, ``''``, ``b`` with ``:``).
        timestamp_unit: see :func:`_validate`.
    """
    path = Path(path)
    checks = {"timestamp_unit": timestamp_unit, "columns": fields}
    header_lines = 0 if names else 1
    unparsed: list[pa_csv.InvalidRow] = []
    parse_options = _delimited_parse_options(path, delimiter, fields, names, unparsed)
    include = [*fields.values(), *separators]
    try:
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=names),
            parse_options=parse_options,
            convert_options=pa_csv.ConvertOptions(column_types=types, include_columns=include),
        )
    except pa.ArrowInvalid:
        table = None  # malformed somewhere: the checked parser below finds and names the bad line
    if table is not None and not unparsed and all(pc.all(pc.equal(table[column], "")).as_py() for column in separators):
        if table.num_rows == 0:
            raise MalformedInputError(f"{path}: no rows (only the header line)")
        raw = pd.DataFrame({name: table[column].to_numpy() for name, column in fields.items()}, copy=False)
        del table
        pa.default_memory_pool().release_unused()
        return _validate(raw, rules, str(path), errors, line_of=lambda row: row + header_lines + 1, **checks)

    unparsed.clear()
    table = pa_csv.read_csv(
        path,
        read_options=pa_csv.ReadOptions(column_names=names, use_threads=False),
        parse_options=parse_options,
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(include, pa.string()), include_columns=include
        ),
    )
    skipped_lines = [row.number for row in unparsed]
    lines = np.setdiff1d(np.arange(header_lines + 1, header_lines + 1 + len(table) + len(unparsed)), skipped_lines)
    raw = pd.DataFrame({name: table[column].to_pandas() for name, column in fields.items()})
    problems = [
        _Problem(
            "wrong separator",
            table[column].to_numpy(zero_copy_only=False) != "",
            lambda row, c=column: f"expected {layout!r}, found {table[c][row].as_py()!r} between two fields",
        )
        for column in separators
    ]
    return _validate(
        raw,
        rules,
        str(path),
        errors,
        line_of=lambda row: int(lines[row]),
        unparsed=[(row.number, f"expected {layout!r}, got {row.text!r}") for row in unparsed],
        extra=problems,
        **checks,
    )


def _movielens_format(version: str) -> dict:
    """:func:`_read_delimited` arguments for the ratings file of a MovieLens release."""
    if version == "ml-100k":
        names = ["user_id", "item_id", "rating", "timestamp"]
        return dict(
            delimiter="\t",
            names=names,
            fields={name: name for name in names},
            types=dict.fromkeys(names, pa.int64()),
            rules=_MOVIELENS_RULES,
            layout="user<TAB>item<TAB>rating<TAB>timestamp",
        )
    if version == "ml-1m":
        names = ["user_id", "sep1", "item_id", "sep2", "rating", "sep3", "timestamp"]
        return dict(
            delimiter=":",
            names=names,
            fields={name: name for name in names if not name.startswith("sep")},
            types={name: pa.string() if name.startswith("sep") else pa.int64() for name in names},
            rules=_MOVIELENS_RULES,
            layout="UserID::MovieID::Rating::Timestamp",
            separators=["sep1", "sep2", "sep3"],
        )
    if version in ("ml-20m", "ml-latest-small"):
        return dict(
            delimiter=",",
            fields={"user_id": "userId", "item_id": "movieId", "timestamp": "timestamp", "rating": "rating"},
            types={"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()},
            rules=_MOVIELENS_HALF_STAR_RULES,
            layout="userId,movieId,rating,timestamp",
        )
    raise ValueError(f"Unknown MovieLens version {version!r}; known: {sorted(MOVIELENS_RATINGS_FILES)}")


def read_movielens(
    path: PathLike, version: str, errors: Errors = "raise", *, timestamp_unit: TimestampUnit | None = None
) -> pd.DataFrame:
    """Read the ratings file of a MovieLens release: ``u.data`` (ml-100k, tab-separated), ``ratings.dat`` (ml-1m,
    ``::``-separated) or ``ratings.csv`` (ml-20m, ml-latest-small; half-star ratings). ``timestamp_unit``: see the
    module docstring (MovieLens files are in whole seconds)."""
    return _read_delimited(path, **_movielens_format(version), errors=errors, timestamp_unit=timestamp_unit)


_AMAZON_RATINGS_NAMES = ["user_id", "item_id", "rating", "timestamp"]
_AMAZON_RATINGS_FORMAT = dict(
    delimiter=",",
    names=_AMAZON_RATINGS_NAMES,
    fields={name: name for name in _AMAZON_RATINGS_NAMES},
    types={"user_id": pa.string(), "item_id": pa.string(), "rating": pa.float64(), "timestamp": pa.int64()},
    rules=_AMAZON_RULES,
    layout="user,item,rating,timestamp",
)


def read_amazon_ratings(
    path: PathLike, errors: Errors = "raise", *, timestamp_unit: TimestampUnit | None = None
) -> pd.DataFrame:
    """Read an Amazon ratings-only CSV (``user,item,rating,timestamp``, no header), e.g. ``ratings_Books.csv``."""
    return _read_delimited(path, **_AMAZON_RATINGS_FORMAT, errors=errors, timestamp_unit=timestamp_unit)


_REVIEW_FIELDS = {"user_id": "reviewerID", "item_id": "asin", "timestamp": "unixReviewTime", "rating": "overall"}


def read_amazon_reviews(
    path: PathLike, errors: Errors = "raise", *, timestamp_unit: TimestampUnit | None = None
) -> pd.DataFrame:
    """Read an Amazon review file (one JSON object per line, optionally gzipped), e.g. ``reviews_Beauty_5.json.gz``.

    Uses ``reviewerID``, ``asin``, ``unixReviewTime`` and ``overall``. A file that pyarrow cannot parse is read
    again line by line to name the bad line (the only per-line Python loop, taken on malformed files only).
    """
    path = Path(path)
    _require_content(path)
    checks = {"timestamp_unit": timestamp_unit, "columns": _REVIEW_FIELDS}
    schema = pa.schema(
        [("reviewerID", pa.string()), ("asin", pa.string()), ("overall", pa.float64()), ("unixReviewTime", pa.int64())]
    )
    try:
        table = pa_json.read_json(
            path, parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        )
    except pa.ArrowInvalid:
        table = None
    if table is not None:
        raw = pd.DataFrame({name: table[column].to_pandas() for name, column in _REVIEW_FIELDS.items()})
        return _validate(raw, _AMAZON_RULES, str(path), errors, line_of=lambda row: row + 1, **checks)
    opener = gzip.open if path.suffix == ".gz" else open
    records, lines, unparsed = [], [], []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                unparsed.append((number, f"invalid JSON ({error.msg})"))
                continue
            if not isinstance(record, dict):
                unparsed.append((number, f"expected a JSON object, got {type(record).__name__}"))
                continue
            records.append([record.get(column) for column in _REVIEW_FIELDS.values()])
            lines.append(number)
    raw = pd.DataFrame(records, columns=list(_REVIEW_FIELDS), dtype=object)
    return _validate(raw, _AMAZON_RULES, str(path), errors, line_of=lambda row: lines[row], unparsed=unparsed, **checks)


def _token_lines(path: Path) -> pa.ListArray:
    """One list of whitespace-separated tokens per line of ``path``."""
    lines = pa_csv.read_csv(
        path,
        read_options=pa_csv.ReadOptions(column_names=["line"]),
        parse_options=pa_csv.ParseOptions(delimiter="\x1f", quote_char=False, ignore_empty_lines=False),
        convert_options=pa_csv.ConvertOptions(column_types={"line": pa.string()}),
    )["line"].combine_chunks()
    return pc.split_pattern_regex(pc.utf8_trim_whitespace(pc.fill_null(lines, "")), r"\s+")


def read_amazon_sequences(
    item_path: PathLike,
    time_path: PathLike | None = None,
    errors: Errors = "raise",
    *,
    timestamp_unit: TimestampUnit | None = None,
) -> pd.DataFrame:
    """Read per-user sequence files: line k of ``item_path`` is ``user item1 item2 ...`` and line k of
    ``time_path`` is ``user t1 t2 ...`` (the ``*_item_org_rank.txt`` / ``*_time_org_rank.txt`` files of the
    Amazon 5-core sets in ``../shared/data``). ``time_path`` defaults to ``item_path`` with ``_item_`` -> ``_time_``.
    Sequences are in time order; the files have no ratings.
    """
    item_path = Path(item_path)
    time_path = (
        Path(time_path) if time_path is not None else item_path.with_name(item_path.name.replace("_item_", "_time_"))
    )
    if time_path == item_path or not time_path.is_file():
        raise FileNotFoundError(f"No time file {time_path} beside {item_path}")
    where = f"{item_path} (times: {time_path.name})"
    _require_content(item_path)
    _require_content(time_path)
    items, times = _token_lines(item_path), _token_lines(time_path)
    if len(items) != len(times):
        raise MalformedInputError(f"{where}: {len(items)} item lines but {len(times)} time lines")
    item_counts = pc.list_value_length(items).to_numpy()
    time_counts = pc.list_value_length(times).to_numpy()
    users = pc.list_element(items, 0)
    mismatch = (item_counts != time_counts) | ~pc.equal(users, pc.list_element(times, 0)).to_numpy(zero_copy_only=False)
    empty = item_counts < 2
    bad_lines = np.flatnonzero(mismatch | empty)
    if errors == "raise" and len(bad_lines):
        line = int(bad_lines[0])
        problem = "no items after the user id" if empty[line] else "the two files disagree on its user or length"
        raise MalformedInputError(f'{where}, line {line + 1}: {problem} (pass errors="skip" to drop malformed rows)')
    lengths = np.where(mismatch | empty, 0, item_counts - 1)
    item_positions = concat_ranges(items.offsets.to_numpy()[:-1] + 1, lengths)  # + 1 skips the user token
    time_positions = concat_ranges(times.offsets.to_numpy()[:-1] + 1, lengths)
    line_numbers = np.repeat(np.arange(1, len(items) + 1), lengths)
    raw = pd.DataFrame(
        {
            "user_id": np.repeat(users.to_numpy(zero_copy_only=False), lengths),
            "item_id": pc.take(items.values, item_positions).to_numpy(zero_copy_only=False),
            "timestamp": pc.take(times.values, time_positions).to_numpy(zero_copy_only=False),
        }
    )
    frame = _validate(
        raw.astype("string"),
        FieldRules(integer_ids=True),
        where,
        errors,
        line_of=lambda row: int(line_numbers[row]),
        timestamp_unit=timestamp_unit,
    )
    if len(bad_lines):
        skipped = {"mismatched or empty line": len(bad_lines), **frame.attrs["skipped_rows"]}
        logger.warning("%s: skipped %s", where, skipped)
        frame.attrs["skipped_rows"] = skipped
    return frame


def read_interactions(
    source: PathLike | pd.DataFrame | datasets.Dataset,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    rating_col: str | None = None,
    delimiter: str | None = None,
    errors: Errors = "raise",
    timestamp_unit: TimestampUnit | None = None,
) -> pd.DataFrame:
    """Read interactions from any table with user, item and timestamp columns (rating optional).

    ``source`` is a CSV/TSV file (with a header line; ``.gz``/``.bz2`` compression by extension), a Parquet file,
    a pandas DataFrame or a ``datasets.Dataset``. Timestamps must be datetimes or numbers: whole unix seconds, or
    in ``timestamp_unit`` (``"s"``, ``"ms"``, ``"us"``; fractions of a second floored) when it is given.
    String ids that all read as canonical integers (no leading zeros) become integers.
    """
    fields = {"user_id": user_col, "item_id": item_col, "timestamp": time_col}
    if rating_col:
        fields["rating"] = rating_col
    if isinstance(source, (pd.DataFrame, datasets.Dataset)):
        where = type(source).__name__
        available = list(source.columns) if isinstance(source, pd.DataFrame) else source.column_names
        _require_columns(where, fields.values(), available, "columns:")
        if isinstance(source, datasets.Dataset):
            source = source.select_columns(list(fields.values())).to_pandas()
        raw = pd.DataFrame({name: source[column].reset_index(drop=True) for name, column in fields.items()})
        return _validate(raw, FieldRules(), where, errors, timestamp_unit=timestamp_unit, columns=fields)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"No interactions file at {path}")
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if ".parquet" in suffixes:
        _require_content(path)
        _require_columns(str(path), fields.values(), pq.read_schema(path).names, "columns:")
        table = pq.read_table(path, columns=list(dict.fromkeys(fields.values())))
        raw = pd.DataFrame({name: table[column].to_pandas() for name, column in fields.items()})
        return _validate(raw, FieldRules(), str(path), errors, timestamp_unit=timestamp_unit, columns=fields)
    return _read_delimited(path, **_table_format(path, fields, delimiter), errors=errors, timestamp_unit=timestamp_unit)


def _table_format(path: Path, fields: dict[str, str], delimiter: str | None) -> dict:
    """:func:`_read_delimited` arguments for a CSV/TSV file with a header (read with :func:`read_interactions`)."""
    if delimiter is None:
        delimiter = "\t" if ".tsv" in [suffix.lower() for suffix in path.suffixes] else ","
    types = {fields["user_id"]: pa.string(), fields["item_id"]: pa.string(), fields["timestamp"]: pa.int64()}
    if "rating" in fields:
        types[fields["rating"]] = pa.float64()
    return dict(
        delimiter=delimiter, fields=fields, types=types, rules=FieldRules(), layout=delimiter.join(fields.values())
    )


def _check_official(frame: pd.DataFrame, path: PathLike, dataset: str, from_verified_archive: bool) -> None:
    """Compare the ratings file read into ``frame`` with the official one: the result goes to
    ``frame.attrs["source_check"]`` (then to ``preprocessing.json``), and a difference is a
    :class:`ModifiedSourceWarning`."""
    rows = len(frame) + sum(frame.attrs["skipped_rows"].values())  # every data row of the file, kept or not
    frame.attrs["source_check"] = _official_check(rows, path, dataset, from_verified_archive)


def _official_check(rows: int, path: PathLike, dataset: str, from_verified_archive: bool) -> dict:
    """The ``source_check`` metadata of a MovieLens ratings file of ``rows`` data rows; warns when it differs."""
    check = check_official_file(path, OFFICIAL_RATINGS_FILES[dataset], rows, from_verified_archive)
    if check.modified:
        warnings.warn(
            f"{path} is not the official {dataset} {check.official.file_name}: {check.describe()}. Results on it are "
            f"not comparable with published {dataset} figures; preprocessing.json records it (source_modified) and "
            "model cards name the dataset as modified.",
            ModifiedSourceWarning,
            stacklevel=3,
        )
    elif not check.verified:
        logger.info(
            "%s: %d rows, as in the official %s; no checksum is known to verify its content", path, rows, dataset
        )
    return check.metadata()


def _find_file(directory: Path, candidates: Sequence[str], dataset: str, help_text: str) -> Path:
    """First of ``candidates`` found (case-insensitively) in ``directory`` or ``directory/<dataset>``."""
    for folder in (directory, directory / dataset):
        if folder.is_dir():
            names = {entry.name.lower(): entry for entry in folder.iterdir() if entry.is_file()}
            for candidate in candidates:
                if candidate.lower() in names:
                    return names[candidate.lower()]
    raise DatasetNotAvailableError(
        f"No {' or '.join(candidates)} for {dataset} in {directory} (or {directory / dataset}). {help_text}"
    )


def _read_amazon_file(path: Path, errors: Errors, timestamp_unit: TimestampUnit | None) -> pd.DataFrame:
    name = path.name.lower()
    if name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz")):
        return read_amazon_reviews(path, errors, timestamp_unit=timestamp_unit)
    if "_item_" in name and name.endswith(".txt"):
        return read_amazon_sequences(path, errors=errors, timestamp_unit=timestamp_unit)
    return read_amazon_ratings(path, errors, timestamp_unit=timestamp_unit)


def load_raw_interactions(
    dataset: str,
    *,
    raw_dir: PathLike | None = None,
    raw_path: PathLike | pd.DataFrame | datasets.Dataset | None = None,
    cache_dir: PathLike | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    rating_col: str | None = None,
    delimiter: str | None = None,
    errors: Errors = "raise",
    timestamp_unit: TimestampUnit | None = None,
) -> pd.DataFrame:
    """Load the raw interactions of a named dataset as the normalised frame described in this module.

    Args:
        dataset: ``ml-100k``, ``ml-1m``, ``ml-20m``, ``ml-latest-small`` (GroupLens zip downloaded and verified
            unless ``raw_dir``/``raw_path`` is given; a file on disk is compared with the official one, see
            :func:`~hf_hstu.data.download.check_official_file`: a difference is a
            :class:`~hf_hstu.data.download.ModifiedSourceWarning` and is recorded in ``frame.attrs["source_check"]``);
            ``amazon-<category>`` (ratings-only CSV
            ``ratings_<Category>.csv``, e.g. ``amazon-books``); ``amazon-<category>-5core`` (review JSON
            ``reviews_<Category>_5.json(.gz)`` or the ``*_item_org_rank.txt``/``*_time_org_rank.txt`` sequence
            files); ``csv`` (any CSV/TSV/Parquet file, DataFrame or ``datasets.Dataset`` given as ``raw_path``,
            read with the ``*_col`` arguments); ``synthetic`` (:func:`make_synthetic_interactions`).
        raw_dir: folder holding the dataset's files (or a ``<dataset>/`` subfolder holding them).
        raw_path: the file itself (or an in-memory table for ``csv``); overrides ``raw_dir``.
        cache_dir: where GroupLens zips are downloaded (default :func:`~hf_hstu.data.download.default_cache_dir`).
        errors: ``"raise"`` on the first malformed row, or ``"skip"`` to drop and count malformed rows.
        timestamp_unit: unit of numeric timestamps: None (default) for whole unix seconds (a fraction of a second,
            or a value after the year 5000, is then a malformed row whose message suggests the unit), or ``"s"``,
            ``"ms"``, ``"us"`` to convert (floored to the second).
    """
    name = dataset.lower()
    if name == "synthetic":
        frame = make_synthetic_interactions()
        frame.attrs.update(source="synthetic", skipped_rows={})
        return frame
    if name in GENERIC_SOURCES:
        if raw_path is None:
            raise ValueError(f"dataset {dataset!r} needs raw_path (--raw-path): a CSV/TSV/Parquet file or a table")
        return read_interactions(
            raw_path,
            user_col=user_col,
            item_col=item_col,
            time_col=time_col,
            rating_col=rating_col,
            delimiter=delimiter,
            errors=errors,
            timestamp_unit=timestamp_unit,
        )
    path, downloaded = _locate_file(dataset, raw_dir, raw_path, cache_dir)
    if name in MOVIELENS_RATINGS_FILES:
        frame = read_movielens(path, name, errors, timestamp_unit=timestamp_unit)
        _check_official(frame, path, name, from_verified_archive=downloaded)
        return frame
    return _read_amazon_file(path, errors, timestamp_unit)


def _locate_file(
    dataset: str, raw_dir: PathLike | None, raw_path: PathLike | None, cache_dir: PathLike | None
) -> tuple[Path, bool]:
    """The raw file of a MovieLens or Amazon dataset (see :func:`load_raw_interactions`), and whether it comes from
    a verified download."""
    name = dataset.lower()
    if raw_path is not None and not isinstance(raw_path, (str, os.PathLike)):
        raise TypeError(f"raw_path of dataset {dataset!r} must be a file path; use dataset 'csv' for tables")
    if name in MOVIELENS_RATINGS_FILES:
        if raw_path is not None:
            return Path(raw_path), False
        folder = Path(raw_dir) if raw_dir is not None else fetch_movielens(name, cache_dir)
        help_text = f"Put the extracted files of {name}.zip there, or leave raw_dir unset to download it."
        return _find_file(folder, [MOVIELENS_RATINGS_FILES[name]], name, help_text), raw_dir is None
    if name.startswith("amazon-"):
        if raw_path is not None:
            return Path(raw_path), False
        key = name.removeprefix("amazon-")
        five_core = key.endswith("-5core")
        key = key.removesuffix("-5core")
        category = AMAZON_CATEGORIES.get(key, key)
        if five_core:
            short = category.split("_")[0]
            candidates = [f"reviews_{category}_5.json.gz", f"reviews_{category}_5.json", f"{short}_item_org_rank.txt"]
        else:
            candidates = [f"ratings_{category}.csv"]
        if raw_dir is None:
            raise DatasetNotAvailableError(f"{dataset}: expected {' or '.join(candidates)}. {_AMAZON_HELP}")
        return _find_file(Path(raw_dir), candidates, name, _AMAZON_HELP), False
    known = [*MOVIELENS_RATINGS_FILES, "amazon-<category>", "amazon-<category>-5core", *GENERIC_SOURCES, "synthetic"]
    raise ValueError(f"Unknown dataset {dataset!r}; known: {known}")


# Block of the streaming CSV reader. It parses blocks ahead of the one asked for, so they are kept small (memory) and
# grouped into chunks of the size asked for (fewer, larger chunks to check and spill).
_READ_BLOCK = 2**20


def _grouped(reader: pa_csv.CSVStreamingReader, chunk_bytes: int) -> Iterator[pa.Table]:
    """The reader's batches grouped into tables of about ``chunk_bytes`` of text."""
    per_chunk = max(1, chunk_bytes // _READ_BLOCK)
    batches = []
    for batch in reader:
        batches.append(batch)
        if len(batches) == per_chunk:
            yield pa.Table.from_batches(batches)
            batches = []
    if batches:
        yield pa.Table.from_batches(batches)


def _iter_delimited(
    path: PathLike,
    *,
    delimiter: str,
    fields: dict[str, str],
    types: dict[str, pa.DataType],
    rules: FieldRules,
    errors: Errors,
    names: list[str] | None = None,
    layout: str,
    separators: Sequence[str] = (),
    timestamp_unit: TimestampUnit | None = None,
    block_size: int,
) -> Iterator[pd.DataFrame]:
    """:func:`_read_delimited` in chunks of about ``block_size`` bytes of text: yields the normalised frame of each
    block, with the same checks and messages (file and line).

    The typed parse runs first; at the first block it cannot parse (or a line it cannot split, or a wrong
    separator), the file is read again as text from the start, line numbers tracked, and the rows already yielded
    are skipped.
    """
    path = Path(path)
    checks = {"timestamp_unit": timestamp_unit, "columns": fields}
    header_lines = 0 if names else 1
    unparsed: list[pa_csv.InvalidRow] = []
    parse_options = _delimited_parse_options(path, delimiter, fields, names, unparsed)
    include = [*fields.values(), *separators]
    yielded = 0
    # A block the typed parse cannot read raises ArrowInvalid: the checked parse below finds and names the bad line.
    with contextlib.suppress(pa.ArrowInvalid):
        typed = pa_csv.open_csv(  # parses the first block already
            path,
            read_options=pa_csv.ReadOptions(column_names=names, block_size=_READ_BLOCK),
            parse_options=parse_options,
            convert_options=pa_csv.ConvertOptions(column_types=types, include_columns=include),
        )
        for batch in _grouped(typed, block_size):
            if unparsed or not all(pc.all(pc.equal(batch[column], "")).as_py() for column in separators):
                break
            raw = pd.DataFrame({name: batch[column].to_numpy() for name, column in fields.items()}, copy=False)
            first_line = yielded + header_lines + 1
            yield _validate(raw, rules, str(path), errors, line_of=lambda row, first=first_line: row + first, **checks)
            yielded += batch.num_rows
        else:
            if yielded == 0:
                raise MalformedInputError(f"{path}: no rows (only the header line)")
            return
    unparsed.clear()
    checked = pa_csv.open_csv(
        path,
        read_options=pa_csv.ReadOptions(column_names=names, use_threads=False, block_size=_READ_BLOCK),
        parse_options=parse_options,
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(include, pa.string()), include_columns=include
        ),
    )
    skip, next_line, reported = yielded, header_lines + 1 + yielded, 0
    for batch in _grouped(checked, block_size):
        if skip:
            batch, skip = batch.slice(min(skip, batch.num_rows)), max(skip - batch.num_rows, 0)
        if batch.num_rows == 0:
            continue
        bad = np.array([row.number for row in unparsed[reported:]], dtype=np.int64)
        bad = bad[bad >= next_line]
        lines = np.setdiff1d(np.arange(next_line, next_line + batch.num_rows + len(bad)), bad)[: batch.num_rows]
        next_line = int(lines[-1]) + 1
        mine = [row for row in unparsed[reported:] if row.number < next_line]
        reported += len(mine)
        raw = pd.DataFrame({name: batch[column].to_pandas() for name, column in fields.items()})
        problems = [
            _Problem(
                "wrong separator",
                batch[column].to_numpy(zero_copy_only=False) != "",
                lambda row, c=column, b=batch: f"expected {layout!r}, found {b[c][row].as_py()!r} between two fields",
            )
            for column in separators
        ]
        yield _validate(
            raw,
            rules,
            str(path),
            errors,
            line_of=lambda row, numbers=lines: int(numbers[row]),
            unparsed=[(row.number, f"expected {layout!r}, got {row.text!r}") for row in mine],
            extra=problems,
            **checks,
        )
    if unparsed[reported:]:  # lines after the last row that parsed
        empty = pd.DataFrame({name: pd.Series([], dtype="string") for name in fields})
        rest = [(row.number, f"expected {layout!r}, got {row.text!r}") for row in unparsed[reported:]]
        yield _validate(empty, rules, str(path), errors, unparsed=rest, **checks)
    elif next_line == header_lines + 1:
        raise MalformedInputError(f"{path}: no rows (only the header line)")


class InteractionChunks:
    """A source read chunk by chunk, for preprocessing in bounded memory: iterating yields normalised frames (see
    the module docstring) in the source's row order, each of about ``chunk_bytes`` of text.

    CSV/TSV files (MovieLens ratings, Amazon ratings CSVs, ``csv`` files) are parsed block by block and Parquet
    files batch by batch, with the checks and messages of the whole-file readers (file and line; rows of a Parquet
    file are numbered across chunks). Amazon review JSON and sequence files, in-memory tables and ``synthetic`` are
    read whole, then handed out in chunks.

    A chunk whose string ids all read as integers has int64 ids (as a whole file would): consumers that meet both
    types in one source use the ids' text (``str`` of the integer is the id as written). After the iteration,
    ``source`` names the source, ``skipped_rows`` counts the rows dropped with ``errors="skip"`` and
    ``source_check`` holds the comparison of a MovieLens file with the official one (see
    :func:`load_raw_interactions`).
    """

    def __init__(
        self,
        dataset: str,
        *,
        raw_dir: PathLike | None = None,
        raw_path: PathLike | pd.DataFrame | datasets.Dataset | None = None,
        cache_dir: PathLike | None = None,
        user_col: str = "user_id",
        item_col: str = "item_id",
        time_col: str = "timestamp",
        rating_col: str | None = None,
        delimiter: str | None = None,
        errors: Errors = "raise",
        timestamp_unit: TimestampUnit | None = None,
        chunk_bytes: int = 64 * 2**20,
    ):
        self.source = dataset
        self.skipped_rows: dict[str, int] = {}
        self.source_check: dict = {}
        self._official: tuple[Path, str, bool] | None = None
        checks = {"errors": errors, "timestamp_unit": timestamp_unit}
        name = dataset.lower()
        fields = {"user_id": user_col, "item_id": item_col, "timestamp": time_col}
        if rating_col:
            fields["rating"] = rating_col
        path = None
        if name in GENERIC_SOURCES and isinstance(raw_path, (str, os.PathLike)):
            path = Path(raw_path)
            if not path.is_file():
                raise FileNotFoundError(f"No interactions file at {path}")
        elif name in MOVIELENS_RATINGS_FILES or (name.startswith("amazon-") and not name.endswith("-5core")):
            path, downloaded = _locate_file(dataset, raw_dir, raw_path, cache_dir)
        if path is not None and ".parquet" in [suffix.lower() for suffix in path.suffixes]:
            self._chunks = lambda: _iter_parquet(path, fields, chunk_bytes, **checks)
        elif path is not None and name in MOVIELENS_RATINGS_FILES:
            self._official = (path, name, downloaded)
            format = _movielens_format(name)
            self._chunks = lambda: _iter_delimited(path, **format, block_size=chunk_bytes, **checks)
        elif path is not None and name in GENERIC_SOURCES:
            format = _table_format(path, fields, delimiter)
            self._chunks = lambda: _iter_delimited(path, **format, block_size=chunk_bytes, **checks)
        elif path is not None and path.name.lower().endswith(".csv"):
            self._chunks = lambda: _iter_delimited(path, **_AMAZON_RATINGS_FORMAT, block_size=chunk_bytes, **checks)
        else:
            arguments = dict(raw_dir=raw_dir, raw_path=raw_path, cache_dir=cache_dir, delimiter=delimiter, **checks)
            columns = dict(user_col=user_col, item_col=item_col, time_col=time_col, rating_col=rating_col)
            self._chunks = lambda: _iter_whole(load_raw_interactions(dataset, **arguments, **columns), chunk_bytes)

    def __iter__(self) -> Iterator[pd.DataFrame]:
        self.skipped_rows = {}
        rows = 0
        for frame in self._chunks():
            self.source = frame.attrs["source"]
            for reason, count in frame.attrs["skipped_rows"].items():
                self.skipped_rows[reason] = self.skipped_rows.get(reason, 0) + count
            rows += len(frame)
            if len(frame):
                yield frame
        if self._official is not None:
            path, name, downloaded = self._official
            self.source_check = _official_check(rows + sum(self.skipped_rows.values()), path, name, downloaded)


# Rows per chunk of a table without text (Parquet, in-memory frames): as many as a CSV chunk of that size holds.
_TEXT_BYTES_PER_ROW = 32


def _iter_parquet(
    path: Path, fields: dict[str, str], chunk_bytes: int, errors: Errors, timestamp_unit: TimestampUnit | None
) -> Iterator[pd.DataFrame]:
    """Normalised frames of a Parquet file, batch by batch (rows numbered across batches in messages)."""
    _require_content(path)
    parquet = pq.ParquetFile(path)
    _require_columns(str(path), fields.values(), parquet.schema_arrow.names, "columns:")
    offset = 0
    columns = list(dict.fromkeys(fields.values()))
    batches = parquet.iter_batches(batch_size=max(1, chunk_bytes // _TEXT_BYTES_PER_ROW), columns=columns)
    for batch in batches:
        raw = pd.DataFrame({name: batch[column].to_pandas() for name, column in fields.items()})
        yield _validate(
            raw, FieldRules(), str(path), errors, timestamp_unit=timestamp_unit, columns=fields, row_offset=offset
        )
        offset += batch.num_rows
    if offset == 0:
        raise MalformedInputError(f"{path}: no rows")


def _iter_whole(frame: pd.DataFrame, chunk_bytes: int) -> Iterator[pd.DataFrame]:
    """A frame read whole, handed out in chunks of about ``chunk_bytes`` (the first carries its skipped rows)."""
    step = max(1, chunk_bytes // _TEXT_BYTES_PER_ROW)
    for start in range(0, len(frame), step):
        chunk = frame.iloc[start : start + step]
        chunk.attrs = {
            "source": frame.attrs["source"],
            "skipped_rows": frame.attrs["skipped_rows"] if start == 0 else {},
        }
        yield chunk


def default_filters(dataset: str) -> dict[str, int]:
    """Filters a dataset gets unless told otherwise: the paper's single-pass 5-interaction filter for the Amazon
    ratings-only CSVs (as in the HSTU reference code), nothing for the others (MovieLens is kept whole)."""
    name = dataset.lower()
    if name.startswith("amazon-") and not name.endswith("-5core"):
        return {"paper_filter": 5}
    return {}
