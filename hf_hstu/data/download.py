"""Checksum-verified download and safe extraction of the GroupLens MovieLens archives, and the check of ratings
files given on disk against the official ones.

Each archive is downloaded once into a cache directory (``$HF_HSTU_CACHE`` or ``~/.cache/hf_hstu``), checked
against its pinned size and checksums before it is used, and extracted without letting any member escape the
target directory. Offline, the error says where to put the archive or its extracted files. A ratings file read
from disk instead (``raw_dir`` / ``raw_path``) is compared with what is known of the official file
(:data:`OFFICIAL_RATINGS_FILES`: rows, and where known size, sha256, git blob id): :func:`check_official_file`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..progress import progress

_CHUNK_BYTES = 1 << 20


class ChecksumError(ValueError):
    """A file's size or checksum differs from the pinned value; the file is not used."""


class UnsafeArchiveError(ValueError):
    """A zip member would be written outside the extraction directory (or is a link)."""


class DatasetNotAvailableError(FileNotFoundError):
    """The raw files of a dataset are neither on disk nor downloadable; the message says where to put them."""


class ModifiedSourceWarning(UserWarning):
    """A raw file differs from the official file of the dataset it is read as (truncated, edited or another release)."""


@dataclass(frozen=True)
class RemoteArchive:
    """A downloadable zip with its pinned size and checksums (``md5`` may be unknown; ``sha256`` is required)."""

    name: str
    url: str
    size: int
    sha256: str
    md5: str | None = None

    @property
    def file_name(self) -> str:
        return PurePosixPath(self.url).name


def _grouplens_archive(name: str, size: int, sha256: str, md5: str | None = None) -> RemoteArchive:
    return RemoteArchive(name, f"https://files.grouplens.org/datasets/movielens/{name}.zip", size, sha256, md5)


# md5: the values GroupLens publishes beside each zip (<url>.md5); sizes and sha256: TensorFlow Datasets'
# url_checksums/movielens.txt. GroupLens's ml-latest-small.zip.md5 value could not be found offline, so that
# archive is pinned by size and sha256 only (its 2018-09 release: 100,836 ratings).
MOVIELENS_ARCHIVES: dict[str, RemoteArchive] = {
    archive.name: archive
    for archive in (
        _grouplens_archive(
            "ml-100k",
            size=4_924_029,
            sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
            md5="0e33842e24a9c977be4e0107933c0723",
        ),
        _grouplens_archive(
            "ml-1m",
            size=5_917_549,
            sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            md5="c4d9eecfca2ab87c1945afe126590906",
        ),
        _grouplens_archive(
            "ml-20m",
            size=198_702_078,
            sha256="96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
            md5="cd245b17a1ae2cc31bb14903e1204af3",
        ),
        _grouplens_archive(
            "ml-latest-small",
            size=978_202,
            sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
        ),
    )
}


@dataclass(frozen=True)
class OfficialFile:
    """What is known of an extracted file of an official release, as the loaders read it.

    Args:
        rows: data rows (lines, the header line excluded).
        size: bytes, when known.
        sha256: when known.
        git_blob: ``git hash-object`` of the file (sha1 of ``b"blob <size>\\0"`` + content), when known.
    """

    dataset: str
    file_name: str
    rows: int
    size: int | None = None
    sha256: str | None = None
    git_blob: str | None = None


# Rows: the GroupLens READMEs. ml-100k u.data and ml-latest-small ratings.csv (2018-09 release, CRLF line ends): size
# and sha256 of the original files (u.data has the git blob 16ef21ed... of several independent copies; ratings.csv
# the same blob in two). ml-1m ratings.dat: its size in several public listings and the git blob id under which
# public repositories list it. ml-20m ratings.csv: only its row count is known here.
OFFICIAL_RATINGS_FILES: dict[str, OfficialFile] = {
    official.dataset: official
    for official in (
        OfficialFile(
            "ml-100k",
            "u.data",
            rows=100_000,
            size=1_979_173,
            sha256="06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            git_blob="16ef21ed827cae1a3f71e89e23cffb5a8f44baae",
        ),
        OfficialFile(
            "ml-1m", "ratings.dat", rows=1_000_209, size=24_594_131, git_blob="77a7c4b150f588c23bb9e1f068aa996c0b413695"
        ),
        OfficialFile("ml-20m", "ratings.csv", rows=20_000_263),
        OfficialFile(
            "ml-latest-small",
            "ratings.csv",
            rows=100_836,
            size=2_483_723,
            sha256="aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
        ),
    )
}


@dataclass(frozen=True)
class SourceCheck:
    """How a raw file compares with the official one (:func:`check_official_file`).

    ``verified``: its content checksum, size and rows match (or it was extracted from a verified archive);
    ``modified``: some known figure differs; neither: only the figures known (e.g. the row count) match.
    ``expected`` / ``found``: the figures that were compared.
    """

    path: str
    official: OfficialFile
    verified: bool
    modified: bool
    rows: int
    expected: dict
    found: dict

    def metadata(self) -> dict:
        """The entries of ``preprocessing.json`` that record the check."""
        return {
            "source_verified": self.verified,
            "source_modified": self.modified,
            "source_rows": self.rows,
            "official_rows": self.official.rows,
            "source_check": {"file": self.path, "expected": self.expected, "found": self.found},
        }

    def describe(self) -> str:
        """What differs, for a warning: "size 21265204 bytes (official 24594131), rows 865,611 (official ...)"."""
        units = {"size": " bytes"}
        return ", ".join(
            f"{name} {_figure(self.found[name])}{units.get(name, '')} (official {_figure(expected)})"
            for name, expected in self.expected.items()
            if name in self.found and self.found[name] != expected
        )


def _figure(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _hash_file(path: Path, *digests) -> None:
    """Feed the bytes of ``path`` to every hashlib object of ``digests``, in one pass."""
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            for digest in digests:
                digest.update(chunk)


def check_official_file(
    path: str | os.PathLike, official: OfficialFile, rows: int, from_verified_archive: bool = False
) -> SourceCheck:
    """Compare the file at ``path`` (read as ``rows`` data rows) with ``official``.

    The size is compared first; the checksums only when it matches (a file of another size differs anyway).
    ``from_verified_archive``: the file was extracted from the archive :func:`fetch_movielens` verified.
    """
    path = Path(path)
    size = path.stat().st_size
    expected, found = {"rows": official.rows}, {"rows": rows}
    if official.size is not None:
        expected["size"], found["size"] = official.size, size
    hashed = False
    if official.size in (None, size) and (official.sha256 or official.git_blob):
        sha256, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
        _hash_file(path, sha256, blob)
        for name, value, digest in (("sha256", official.sha256, sha256), ("git_blob", official.git_blob, blob)):
            if value is not None:
                expected[name], found[name] = value, digest.hexdigest()
        hashed = True
    modified = any(found[name] != value for name, value in expected.items())
    verified = not modified and (hashed or from_verified_archive)
    return SourceCheck(str(path), official, verified, modified, rows, expected, found)


def default_cache_dir() -> Path:
    """``$HF_HSTU_CACHE`` if set, else ``~/.cache/hf_hstu``."""
    return Path(os.environ.get("HF_HSTU_CACHE", Path.home() / ".cache" / "hf_hstu")).expanduser()


def verify_file(path: str | os.PathLike, archive: RemoteArchive) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the archive's size, sha256 and (when pinned) md5."""
    path = Path(path)
    size = path.stat().st_size
    if size != archive.size:
        raise ChecksumError(f"{path}: size {size} bytes, expected {archive.size} for {archive.url}")
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    _hash_file(path, sha256, md5)
    if sha256.hexdigest() != archive.sha256:
        raise ChecksumError(f"{path}: sha256 {sha256.hexdigest()}, expected {archive.sha256} for {archive.url}")
    if archive.md5 is not None and md5.hexdigest() != archive.md5:
        raise ChecksumError(f"{path}: md5 {md5.hexdigest()}, expected {archive.md5} for {archive.url}")


def download_archive(archive: RemoteArchive, destination: str | os.PathLike, manual_hint: str = "") -> Path:
    """Download ``archive`` to the file ``destination`` and verify it; a file that fails is deleted, never used.

    Args:
        manual_hint: appended to the error when the URL cannot be reached (where to put the files instead).
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    try:
        with urllib.request.urlopen(archive.url, timeout=60) as response, partial.open("wb") as handle:
            total = int(response.headers.get("Content-Length") or archive.size)
            with progress(total=total, unit="B", unit_scale=True, desc=f"download {archive.file_name}") as bar:
                while chunk := response.read(_CHUNK_BYTES):
                    handle.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise DatasetNotAvailableError(
            f"Could not download {archive.url} ({error}). Without internet access, fetch {archive.file_name} "
            f"elsewhere and put it at {destination} (it is checked against its pinned checksum). {manual_hint}"
        ) from error
    try:
        verify_file(partial, archive)
    except ChecksumError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(destination)
    return destination


def staging_dir_beside(target: Path) -> Path:
    """A new empty hidden directory beside ``target``, to be renamed to it once complete (made under the umask)."""
    staging = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    staging.mkdir()
    return staging


def _is_link(member: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(member.external_attr >> 16)


def safe_extract_zip(zip_path: str | os.PathLike, target_dir: str | os.PathLike) -> Path:
    """Extract ``zip_path`` into ``target_dir``, refusing absolute paths, ``..`` components and links.

    Nothing is written to ``target_dir`` unless every member is safe: the archive is extracted into a temporary
    directory beside it, which is then renamed. ``target_dir`` must not exist yet.
    """
    zip_path, target_dir = Path(zip_path), Path(target_dir)
    if target_dir.exists():
        raise FileExistsError(f"{target_dir} already exists; refusing to extract {zip_path} over it")
    with zipfile.ZipFile(zip_path) as archive:
        for member in archive.infolist():
            parts = PurePosixPath(member.filename.replace("\\", "/")).parts
            if (
                member.filename.startswith(("/", "\\"))
                or (parts and ":" in parts[0])
                or ".." in parts
                or _is_link(member)
            ):
                raise UnsafeArchiveError(f"{zip_path}: refusing to extract member {member.filename!r}")
        target_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_dir_beside(target_dir)
        try:
            archive.extractall(staging)
            staging.replace(target_dir)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return target_dir


def fetch_movielens(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory the MovieLens ``name`` zip is extracted to (its files are in its ``<name>/`` subfolder).

    The zip is downloaded into ``cache_dir`` and verified first unless it is already there (then it is verified).
    """
    if name not in MOVIELENS_ARCHIVES:
        raise ValueError(f"Unknown MovieLens archive {name!r}; known: {sorted(MOVIELENS_ARCHIVES)}")
    archive = MOVIELENS_ARCHIVES[name]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    extracted = cache_dir / name
    if (extracted / ".verified").is_file():
        return extracted
    if extracted.exists():  # an extraction that was never marked verified
        shutil.rmtree(extracted)
    zip_path = cache_dir / archive.file_name
    if zip_path.is_file():
        try:
            verify_file(zip_path, archive)
        except ChecksumError as error:
            raise ChecksumError(f"{error}. Delete or replace {zip_path}; it is not used.") from None
    else:
        download_archive(
            archive,
            zip_path,
            manual_hint="Or extract it yourself and pass the folder holding its files as raw_dir (--raw-dir).",
        )
    safe_extract_zip(zip_path, extracted)
    (extracted / ".verified").write_text(archive.sha256, encoding="utf-8")
    return extracted
