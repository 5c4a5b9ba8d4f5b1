"""Data pipeline: raw interaction sources -> per-user sequences (``datasets.DatasetDict``) -> padded batches.

```python
from hf_hstu.data import ItemVocabulary, SequenceCollator, load_sequences, preprocess

preprocess("ml-1m", "data/ml-1m")  # downloads (checksum-verified) or reads raw_dir
ds = load_sequences("data/ml-1m")  # DatasetDict: train / validation / test
vocabulary = ItemVocabulary.load("data/ml-1m")
batch = SequenceCollator(max_seq_len=200)([ds["test"][0], ds["test"][1]])
```
"""

from .collator import SequenceCollator
from .download import (
    MOVIELENS_ARCHIVES,
    OFFICIAL_RATINGS_FILES,
    ChecksumError,
    DatasetNotAvailableError,
    ModifiedSourceWarning,
    OfficialFile,
    RemoteArchive,
    SourceCheck,
    UnsafeArchiveError,
    check_official_file,
    default_cache_dir,
    download_archive,
    fetch_movielens,
    safe_extract_zip,
    verify_file,
)
from .preprocessing import (
    METADATA_FILE,
    SPLIT_PROTOCOLS,
    PreprocessingConfig,
    SequenceData,
    build_sequences,
    load_sequences,
    preprocess,
)
from .sources import (
    AMAZON_CATEGORIES,
    MOVIELENS_RATINGS_FILES,
    FieldRules,
    InteractionChunks,
    MalformedInputError,
    default_filters,
    load_raw_interactions,
    read_amazon_ratings,
    read_amazon_reviews,
    read_amazon_sequences,
    read_interactions,
    read_movielens,
)
from .streaming import StreamingBudget, build_sequences_streaming
from .synthetic import make_synthetic_interactions, write_ratings_log
from .vocabulary import ItemVocabulary, UserVocabulary, Vocabulary

__all__ = [
    "AMAZON_CATEGORIES",
    "METADATA_FILE",
    "MOVIELENS_ARCHIVES",
    "MOVIELENS_RATINGS_FILES",
    "OFFICIAL_RATINGS_FILES",
    "SPLIT_PROTOCOLS",
    "ChecksumError",
    "DatasetNotAvailableError",
    "FieldRules",
    "InteractionChunks",
    "ItemVocabulary",
    "MalformedInputError",
    "ModifiedSourceWarning",
    "OfficialFile",
    "PreprocessingConfig",
    "RemoteArchive",
    "SequenceCollator",
    "SequenceData",
    "SourceCheck",
    "StreamingBudget",
    "UnsafeArchiveError",
    "UserVocabulary",
    "Vocabulary",
    "build_sequences",
    "build_sequences_streaming",
    "check_official_file",
    "default_cache_dir",
    "default_filters",
    "download_archive",
    "fetch_movielens",
    "load_raw_interactions",
    "load_sequences",
    "make_synthetic_interactions",
    "preprocess",
    "read_amazon_ratings",
    "read_amazon_reviews",
    "read_amazon_sequences",
    "read_interactions",
    "read_movielens",
    "safe_extract_zip",
    "verify_file",
    "write_ratings_log",
]
