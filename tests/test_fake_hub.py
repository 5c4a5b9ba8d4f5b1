"""The fake Hub against the real clients: huggingface_hub, transformers and datasets push and pull through it."""

import re
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError


def test_create_upload_download_round_trip(fake_hub, tmp_path):
    api = HfApi()
    url = api.create_repo("org/name")
    assert (url.repo_id, url.repo_type, url.endpoint) == ("org/name", "model", fake_hub.url)
    assert api.create_repo("org/name", exist_ok=True).repo_id == "org/name"
    with pytest.raises(HfHubHTTPError, match="409"):
        api.create_repo("org/name")
    assert api.whoami()["name"] == fake_hub.user

    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="notes/a.txt", repo_id="org/name")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"x": 1}')
    weights = bytes(range(256)) * 64
    (folder / "sub" / "weights.safetensors").write_bytes(weights)
    second = api.upload_folder(folder_path=folder, repo_id="org/name")
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="notes/a.txt", repo_id="org/name")

    assert re.fullmatch(r"[0-9a-f]{40}", first.oid) and first.oid != second.oid
    assert sorted(api.list_repo_files("org/name")) == [
        ".gitattributes",
        "config.json",
        "notes/a.txt",
        "sub/weights.safetensors",
    ]
    # The safetensors file went through LFS (batch + PUT), the others inline in the commit.
    assert any(r.startswith("PUT /lfs-upload/") for r in fake_hub.requests)
    assert open(hf_hub_download("org/name", "sub/weights.safetensors"), "rb").read() == weights
    assert open(hf_hub_download("org/name", "notes/a.txt"), "rb").read() == b"v2"
    assert open(hf_hub_download("org/name", "notes/a.txt", revision=second.oid), "rb").read() == b"v1"
    assert api.model_info("org/name").sha == fake_hub.get_repo("model", "org/name").head

    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/name", "missing.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/name", "config.json", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/other", "config.json")


def test_invalid_card_metadata_is_refused(fake_hub):
    api = HfApi()
    api.create_repo("org/card")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(
            path_or_fileobj=b"---\nkey: [unclosed\n---\ntext\n", path_in_repo="README.md", repo_id="org/card"
        )
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\n---\ntext\n", path_in_repo="README.md", repo_id="org/card")
    assert api.model_info("org/card").card_data.license == "mit"


def test_transformers_push_and_load(fake_hub):
    from transformers import AutoModel, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    model = BertModel(config)
    model.push_to_hub("org/tiny")
    loaded = BertModel.from_pretrained("org/tiny")
    assert isinstance(AutoModel.from_pretrained("org/tiny"), BertModel)
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_datasets_push_and_load(fake_hub):
    import datasets

    splits = {"train": {"item_ids": [[1, 2], [3]], "user": [0, 1]}, "test": {"item_ids": [[4, 5, 6]], "user": [2]}}
    datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in splits.items()}).push_to_hub("org/ds")
    assert "README.md" in fake_hub.files("dataset", "org/ds")

    loaded = datasets.load_dataset("org/ds")
    assert {k: loaded[k].to_dict() for k in loaded} == splits
    # A child process inherits the fixture's environment and reaches the same server.
    script = "import datasets; print(datasets.load_dataset('org/ds')['test'].to_dict())"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, textwrap.shorten(result.stderr, 2000)
    assert result.stdout.strip().splitlines()[-1] == str(splits["test"])
