"""Categorical item features: reading item tables, keeping them beside the sequences, embedding them in the model,
training with them and cold-start scoring."""

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from data_testing import shared_dataset
from recommender_testing import (
    NUM_ITEMS,
    TINY_TRAINING_ARGUMENTS,
    load_in_fresh_process,
    right_padded_batch,
    tiny_config,
    tiny_model,
)
from transformers import AutoModel

from hf_hstu import HSTUModel, SASRecModel
from hf_hstu.data import ItemVocabulary, build_sequences, load_sequences, make_synthetic_interactions, preprocess
from hf_hstu.data.item_features import (
    ML_100K_GENRES,
    ItemFeatureTable,
    ItemTableConfig,
    build_item_features,
    load_item_features,
    read_item_table,
    read_movielens_items,
)
from hf_hstu.hub.dataset_card import preprocessing_command
from hf_hstu.hub.push import push_dataset
from hf_hstu.modeling.similarity import l2_normalize
from hf_hstu.recommender import Recommender
from hf_hstu.reproduction import reproduce
from hf_hstu.serving import UserEncoder, encoder_inputs, export_user_encoder, load_item_table
from hf_hstu.training.arguments import parse_training_arguments
from hf_hstu.training.loop import train

FEATURES = dict(
    item_feature_names=["genres", "decade"], item_feature_vocab_sizes=[5, 3], item_feature_max_values=[2, 1]
)


def _codes() -> torch.Tensor:
    """(NUM_ITEMS + 1, 3) codes: item i has genres {i % 5 + 1} (+ 5 when i is even) and decade i % 3 + 1."""
    codes = torch.zeros(NUM_ITEMS + 1, 3, dtype=torch.long)
    items = torch.arange(1, NUM_ITEMS + 1)
    codes[1:, 0] = items % 5 + 1
    codes[1:, 1] = torch.where((items % 2 == 0) & (items % 5 + 1 != 5), 5, 0)
    codes[1:, 2] = items % 3 + 1
    return codes


def _featured_model(model_type: str = "hstu", **overrides):
    model = tiny_model(model_type, **FEATURES, **overrides)
    model.set_item_features(_codes())
    return model


# --- reading item tables ---------------------------------------------------------------------------------------


def test_movielens_item_files_give_lists_of_genres(tmp_path):
    (tmp_path / "u.item").write_text(
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
        "2|GoldenEye (1995)|01-Jan-1995||http://y|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n",
        encoding="latin-1",
    )
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Animation|Children's\n7::Sabrina (1995)::\n")
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,"Toy Story, the (1995)",Adventure|Comedy\n9,X (2000),(no genres listed)\n'
    )
    ml_100k = read_movielens_items(tmp_path / "u.item", "ml-100k")
    assert ml_100k["item_id"].tolist() == [1, 2]
    assert ml_100k["genres"].tolist() == [["Animation", "Children's", "Comedy"], ["Action", "Adventure", "Thriller"]]
    ml_1m = read_movielens_items(tmp_path / "movies.dat", "ml-1m")
    assert ml_1m["genres"].tolist() == [["Animation", "Children's"], []] and ml_1m["item_id"].tolist() == [1, 7]
    small = read_movielens_items(tmp_path / "movies.csv", "ml-latest-small")
    assert small["genres"].tolist() == [["Adventure", "Comedy"], []] and small["item_id"].tolist() == [1, 9]


def test_malformed_movie_lines_name_file_and_line(tmp_path):
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Animation\nx::Bad::Drama\n")
    with pytest.raises(ValueError, match=r"movies.dat, line 2: item id 'x' is not an integer"):
        read_movielens_items(tmp_path / "movies.dat", "ml-1m")
    (tmp_path / "u.item").write_text("1|Toy Story|01-Jan-1995||x|0|0|1\n")
    with pytest.raises(ValueError, match=r"u.item, line 1: expected 24"):
        read_movielens_items(tmp_path / "u.item", "ml-100k")


def test_shared_movielens_files_hold_every_film():
    ml_100k = read_movielens_items(shared_dataset("ml-100k") / "u.item", "ml-100k")
    assert len(ml_100k) == 1682 and ml_100k["item_id"].is_unique
    genre_file = (shared_dataset("ml-100k") / "u.genre").read_text().split()
    assert tuple(line.split("|")[0] for line in genre_file) == ML_100K_GENRES
    ml_1m = read_movielens_items(shared_dataset("ml-1m") / "movies.dat", "ml-1m")
    assert len(ml_1m) == 3883 and ml_1m["genres"].map(len).max() == 6
    assert sorted({genre for genres in ml_1m["genres"] for genre in genres}) == sorted(
        set(ML_100K_GENRES) - {"unknown"}
    )


def test_generic_item_table_splits_cells_and_names_its_problems(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("sku,brand,tags,price\n10,acme,a;b,3\n20,,c,4\n30,zeta,,5\n")
    table = read_item_table(path, id_col="sku", feature_cols=["brand", "tags"], separator=";")
    assert table["item_id"].tolist() == [10, 20, 30]  # integer ids, as the interaction readers give them
    assert table["brand"].tolist() == [["acme"], [], ["zeta"]]
    assert table["tags"].tolist() == [["a", "b"], ["c"], []]
    with pytest.raises(ValueError, match=r"items.csv: no id column 'item_id'"):
        read_item_table(path)
    with pytest.raises(ValueError, match=r"feature columns \['colour'\] not found"):
        read_item_table(path, id_col="sku", feature_cols=["colour"])
    path.write_text("sku,brand\n10,acme\n10,zeta\n")
    with pytest.raises(ValueError, match="item id 10 appears more than once"):
        read_item_table(path, id_col="sku")
    parquet = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": ["a", "b"], "tags": [["x", "y"], []]}).to_parquet(parquet)
    assert read_item_table(parquet)["tags"].tolist() == [["x", "y"], []]


def test_item_table_follows_the_vocabulary():
    vocabulary = ItemVocabulary(np.array([10, 20, 30]))
    table = pd.DataFrame({"item_id": [30, 20, 40], "genres": [["b", "a"], ["a"], ["z"]]})
    items, summary = build_item_features(table, vocabulary)
    assert items["item_id"] == [1, 2, 3] and items["raw_item_id"] == [10, 20, 30]
    assert items["genres"] == [[], ["a"], ["b", "a"]]
    assert summary == {"features": ["genres"], "items_without_features": 1, "table_items_not_in_vocabulary": 1}
    encoded = ItemFeatureTable.from_dataset(items)
    assert encoded.categories == [["a", "b"]] and encoded.max_values == [2]
    np.testing.assert_array_equal(encoded.feature_ids, [[0, 0], [0, 0], [1, 0], [2, 1]])
    assert encoded.config_fields() == {
        "item_feature_names": ["genres"],
        "item_feature_vocab_sizes": [2],
        "item_feature_max_values": [2],
    }
    with pytest.raises(ValueError, match="none of the item table's 1 ids"):
        build_item_features(pd.DataFrame({"item_id": ["x"], "genres": [["a"]]}), vocabulary)


# --- preprocessing keeps the item table -------------------------------------------------------------------------


def _synthetic_with_features(tmp_path, num_users: int = 48):
    """Interactions of 40 items and an item table: a 'parity' feature and a multi-valued 'tags' one."""
    interactions = make_synthetic_interactions(
        num_users=num_users, num_items=40, num_clusters=4, min_length=6, max_length=24, seed=0
    )
    table = tmp_path / "items.csv"
    rows = [f"{item},{'even' if item % 2 == 0 else 'odd'},t{item % 3}|t{item % 5}" for item in range(1, 41)]
    table.write_text("item_id,parity,tags\n" + "\n".join(rows) + "\n")
    return interactions, ItemTableConfig(item_table=str(table))


@pytest.mark.parametrize("save_format", ["arrow", "parquet"])
def test_preprocess_saves_the_item_table_beside_the_splits(tmp_path, save_format):
    interactions, items_config = _synthetic_with_features(tmp_path)
    data = preprocess("csv", tmp_path / "out", raw_path=interactions, item_table=items_config, save_format=save_format)
    assert data.metadata["item_features"]["features"] == ["parity", "tags"]
    assert set(load_sequences(tmp_path / "out")) == {"train", "validation", "test"}  # not an extra split
    items = load_item_features(tmp_path / "out")
    assert len(items) == data.item_vocabulary.num_items and items["raw_item_id"] == data.item_vocabulary.raw_ids
    row = items[6]
    raw = row["raw_item_id"]
    assert row["parity"] == ["even" if raw % 2 == 0 else "odd"] and row["tags"] == [f"t{raw % 3}", f"t{raw % 5}"]
    assert load_item_features(tmp_path) is None
    command = preprocessing_command(data.metadata)
    assert "--item_table ITEM_TABLE --item_table_id_col item_id --item_feature_cols parity,tags" in command
    streamed = preprocess(
        "csv",
        tmp_path / "streamed",
        raw_path=interactions,
        item_table=items_config,
        memory_budget_mb=8,
        save_format=save_format,
    )
    assert streamed.metadata["item_features"] == data.metadata["item_features"]
    assert load_item_features(tmp_path / "streamed").to_list() == items.to_list() == streamed.item_features.to_list()


def test_preprocess_reads_movielens_genres_beside_the_ratings(tmp_path):
    data = preprocess("ml-100k", raw_dir=shared_dataset("ml-100k"), item_table=ItemTableConfig(item_table="genres"))
    items = data.item_features
    assert len(items) == 1682 and data.metadata["item_features"]["items_without_features"] == 0
    assert items[0]["genres"] == ["Animation", "Children's", "Comedy"]  # Toy Story
    assert preprocessing_command(data.metadata).endswith("--item_table genres --output data/ml-100k")
    with pytest.raises(ValueError, match="'synthetic' has none"):
        preprocess("synthetic", item_table=ItemTableConfig(item_table="genres"))


# --- the model ------------------------------------------------------------------------------------------------


def test_config_needs_the_three_feature_lists_together():
    with pytest.raises(Exception, match="must be given together"):  # StrictDataclassClassValidationError
        tiny_config(item_feature_names=["genres"], item_feature_vocab_sizes=[3])
    with pytest.raises(Exception, match="positive integers"):
        tiny_config(item_feature_names=["g"], item_feature_vocab_sizes=[0], item_feature_max_values=[1])


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_items_are_their_id_plus_the_pooled_categories(pooling):
    model = _featured_model(item_feature_pooling=pooling)
    ids = model.item_embeddings.weight
    categories = model.item_features.embeddings.weight  # row 0 padding, 1..5 genres, 6..8 decades
    item = 4  # genre 5 only (its second slot would repeat 5), decade 2
    expected = ids[item] + categories[5] + categories[5 + 2]
    torch.testing.assert_close(model.embed_items(torch.tensor([item]))[0], expected)
    item = 6  # genres 2 and 5, decade 1
    pooled = categories[2] + categories[5]
    expected = ids[item] + (pooled / 2 if pooling == "mean" else pooled) + categories[5 + 1]
    torch.testing.assert_close(model.embed_items(torch.tensor([[item]]))[0, 0], expected)
    torch.testing.assert_close(model.item_weight()[item], expected)
    torch.testing.assert_close(model.item_weight()[0], torch.zeros_like(expected))  # padding stays zero
    torch.testing.assert_close(model.item_table(), l2_normalize(model.item_weight()))


def test_feature_embeddings_start_as_the_item_embeddings():
    torch.manual_seed(0)
    config = tiny_config(
        hidden_size=32,
        item_feature_names=["a", "b"],
        item_feature_vocab_sizes=[900, 100],
        item_feature_max_values=[3, 1],
    )
    weight = AutoModel.from_config(config).item_features.embeddings.weight.detach().double()
    assert weight[0].abs().sum() == 0  # padding
    values, std = weight[1:].flatten(), config.initializer_range
    assert values.abs().max() <= 2 * std * (1 + 1e-6)  # truncated at two standard deviations
    assert values.std().item() == pytest.approx(0.8796 * std, rel=5 / math.sqrt(2 * values.numel()))


def test_set_item_features_checks_the_codes():
    model = tiny_model(**FEATURES)
    codes = _codes()
    codes[7, 2] = 4  # decade has 3 categories
    with pytest.raises(ValueError, match=r"feature 1 of item 7 has a code outside 0..3"):
        model.set_item_features(codes)
    with pytest.raises(ValueError, match=r"shape \(31, 3\)"):
        model.set_item_features(codes[:, :2])
    with pytest.raises(ValueError, match="has no item features"):
        tiny_model().set_item_features(codes)


def test_a_model_without_features_is_unchanged(tmp_path):
    model = tiny_model("sasrec")
    assert model.item_features is None
    assert not any("item_features" in name for name in model.state_dict())
    torch.testing.assert_close(model.item_table(), model.similarity.item_table(model.item_embeddings.weight))
    with pytest.raises(ValueError, match="cold_start_items needs item features"):
        model.recommend(input_ids=torch.tensor([[1, 2]]), cold_start_items=True)


@pytest.mark.parametrize("model_type", ["hstu", "sasrec"])
def test_checkpoint_carries_the_feature_table(tmp_path, model_type):
    model = _featured_model(model_type).eval()
    model.item_features.trained_items[3] = False
    model.save_pretrained(tmp_path)
    loaded = (HSTUModel if model_type == "hstu" else SASRecModel).from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.item_features.feature_ids, model.item_features.feature_ids)
    assert torch.equal(loaded.item_features.trained_items, model.item_features.trained_items)
    batch = right_padded_batch()
    batch.pop("ratings")
    torch.testing.assert_close(loaded.recommend(**batch, k=5).scores, model.recommend(**batch, k=5).scores)


def test_a_checkpoint_with_features_loads_as_remote_code(tmp_path):
    model = _featured_model().eval()
    model.save_pretrained(tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / "item_features.py").is_file()
    batch = right_padded_batch()
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "timestamps", "target_timestamps")}
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    remote = load_in_fresh_process(tmp_path, str(tmp_path / "checkpoint"), "hidden", inputs, env)
    torch.testing.assert_close(
        torch.tensor(remote["user_embeddings"]), model(**inputs).user_embeddings, atol=1e-6, rtol=0
    )
    assert remote["item_ids"] == model.recommend(**inputs, k=5).item_ids.tolist()


def test_the_export_embeds_items_with_their_features(tmp_path):
    model = _featured_model().eval()
    export_user_encoder(model, tmp_path, onnx=False)
    torch.testing.assert_close(load_item_table(tmp_path), model.item_table())
    program = torch.export.load(tmp_path / "user_encoder.pt2").module()
    batch = right_padded_batch(seed=3, lengths=(4, 1, 6))
    lengths = batch["attention_mask"].sum(1).tolist()
    histories = [row[:n].tolist() for row, n in zip(batch["input_ids"], lengths, strict=True)]
    times = [row[:n].tolist() for row, n in zip(batch["timestamps"], lengths, strict=True)]
    names = UserEncoder(model).input_names
    inputs = encoder_inputs(names, 8, histories, times, batch["target_timestamps"].tolist())
    expected = model.embed_users(
        batch["input_ids"], batch["attention_mask"], batch["timestamps"], batch["target_timestamps"]
    )
    torch.testing.assert_close(program(**inputs), expected, rtol=0, atol=1e-5)


def test_cached_recommendations_match_with_features():
    model = _featured_model().eval()
    batch = right_padded_batch(lengths=(5, 3, 8, 2))
    batch.pop("ratings")
    full = model.recommend(**batch, k=5)
    head = {name: tensor[:, :1] if tensor.dim() == 2 else tensor for name, tensor in batch.items()}
    cache = model(**{k: v for k, v in head.items() if k != "target_timestamps"}, use_cache=True).cache
    tail = {name: tensor[:, 1:] if tensor.dim() == 2 else tensor for name, tensor in batch.items()}
    cached = model.recommend(**tail, k=5, cache=cache)
    torch.testing.assert_close(cached.scores, full.scores)
    assert torch.equal(cached.item_ids, full.item_ids)


def test_cold_start_scores_unseen_items_from_their_features_alone():
    model = _featured_model().eval()
    trained = torch.ones(NUM_ITEMS + 1, dtype=torch.bool)
    trained[[7, 12]] = False
    model.set_item_features(_codes(), trained)
    with torch.no_grad():
        model.item_embeddings.weight[7] = 100.0  # an untrained id embedding that would dominate the item's score
    history = torch.tensor([[1, 2, 3]])
    times = torch.tensor([[10, 20, 30]])
    user = model.embed_users(history, timestamps=times, target_timestamps=torch.tensor([40]))[0]
    features_only = model.item_features(torch.tensor([7, 12]))  # (2, D)
    expected = l2_normalize(features_only) @ user
    cold = model.recommend(
        history,
        timestamps=times,
        target_timestamps=torch.tensor([40]),
        candidate_ids=torch.tensor([7, 12]),
        k=2,
        cold_start_items=True,
    )
    torch.testing.assert_close(cold.scores[0], expected.sort(descending=True).values)
    warm = model.recommend(
        history, timestamps=times, target_timestamps=torch.tensor([40]), candidate_ids=torch.tensor([7, 12]), k=2
    )
    with_ids = l2_normalize(model.item_weight()[[7, 12]]) @ user
    torch.testing.assert_close(warm.scores[0], with_ids.sort(descending=True).values)
    assert not torch.allclose(with_ids, expected)
    # trained items score the same either way
    torch.testing.assert_close(model.item_weight(True)[1:7], model.item_weight()[1:7])


# --- training -------------------------------------------------------------------------------------------------


def _train(tmp_path, dataset: str, *extra: str):
    argv = [*TINY_TRAINING_ARGUMENTS, "--top_k", "5,10", "--dataset", dataset, "--output_dir", str(tmp_path / "run")]
    return train(*parse_training_arguments([*argv, "--item_features", "true", "--max_steps", "3", *extra]))


def test_training_with_features_saves_a_model_that_recommends_raw_ids(tmp_path):
    interactions, items_config = _synthetic_with_features(tmp_path)
    data = preprocess("csv", tmp_path / "data", raw_path=interactions, item_table=items_config)
    _train(tmp_path, str(tmp_path / "data"))
    best = tmp_path / "run" / "best_model"
    recommender = Recommender.from_pretrained(best)
    model = recommender.model
    assert model.config.item_feature_names == ["parity", "tags"]
    assert model.config.item_feature_vocab_sizes == [2, 5]  # even/odd; t0..t4
    expected = ItemFeatureTable.from_dataset(data.item_features)
    stored = model.item_features.feature_ids.numpy()
    np.testing.assert_array_equal(stored[:, :1], expected.feature_ids[:, :1])  # first feature: no offset
    np.testing.assert_array_equal(
        stored[:, 1:], np.where(expected.feature_ids[:, 1:] > 0, expected.feature_ids[:, 1:] + 2, 0)
    )
    train_items = {item for row in data.dataset["train"]["item_ids"] for item in row}
    assert set(torch.nonzero(model.item_features.trained_items).flatten().tolist()) == train_items
    raw_history = data.item_vocabulary.raw_ids[:3]
    for cold in (False, True):
        recommendations = recommender.recommend(
            [raw_history], timestamps=[[1, 2, 3]], request_times=[4], k=4, cold_start_items=cold
        )
        assert len(recommendations[0]) == 4
        assert {raw for raw, _ in recommendations[0]} <= set(data.item_vocabulary.raw_ids) - set(raw_history)


def test_items_only_in_the_item_table_join_the_catalogue_as_cold_start_items(tmp_path):
    interactions, items_config = _synthetic_with_features(tmp_path)
    table = tmp_path / "items.csv"
    table.write_text(table.read_text() + "41,odd,t2|t1\n42,even,t0|t2\n")  # two items no one has interacted with
    plain = preprocess("csv", raw_path=interactions, item_table=items_config)
    items_config.add_item_table_items = True
    data = preprocess("csv", tmp_path / "data", raw_path=interactions, item_table=items_config)
    assert data.item_vocabulary.raw_ids == [*plain.item_vocabulary.raw_ids, 41, 42]  # the others keep their index
    assert data.metadata["num_items"] == plain.metadata["num_items"] + 2
    assert data.metadata["item_features"]["items_only_in_item_table"] == 2
    assert data.item_features[-1]["parity"] == ["even"] and data.item_features[-1]["tags"] == ["t0", "t2"]
    for split in ("train", "validation", "test"):
        assert data.dataset[split]["item_ids"] == plain.dataset[split]["item_ids"]
    assert "--add_item_table_items true" in preprocessing_command(data.metadata)
    streamed = preprocess(
        "csv", tmp_path / "streamed", raw_path=interactions, item_table=items_config, memory_budget_mb=8
    )
    assert streamed.item_vocabulary == data.item_vocabulary and streamed.metadata["num_items"] == len(
        data.item_vocabulary
    )
    assert ItemVocabulary.load(tmp_path / "streamed") == data.item_vocabulary
    assert load_item_features(tmp_path / "streamed").to_list() == data.item_features.to_list()
    with pytest.raises(ValueError, match="ids do not match the interactions' item ids"):
        items_config.item_table = str(tmp_path / "string_ids.csv")
        (tmp_path / "string_ids.csv").write_text("item_id,parity,tags\nx,odd,t1\n3,odd,t1\n")
        preprocess("csv", raw_path=interactions, item_table=items_config)

    _train(tmp_path, str(tmp_path / "data"))
    recommender = Recommender.from_pretrained(tmp_path / "run" / "best_model")
    new_items = torch.tensor(data.item_vocabulary.encode([41, 42]))
    assert not recommender.model.item_features.trained_items[new_items].any()
    everything = len(data.item_vocabulary) - 3
    recommendations = recommender.recommend(
        [[1, 2, 3]], timestamps=[[1, 2, 3]], request_times=[4], k=everything, cold_start_items=True
    )
    assert {41, 42} <= {raw for raw, _ in recommendations[0]}


def test_the_item_table_travels_with_a_hub_dataset(fake_hub, tmp_path):
    interactions, items_config = _synthetic_with_features(tmp_path)
    data = preprocess("csv", tmp_path / "data", raw_path=interactions, item_table=items_config)
    push_dataset(tmp_path / "data", "org/featured")
    assert set(load_sequences("org/featured")) == {"train", "validation", "test"}
    _train(tmp_path, "org/featured")
    model = AutoModel.from_pretrained(tmp_path / "run" / "best_model")
    expected = ItemFeatureTable.from_dataset(data.item_features).feature_ids
    np.testing.assert_array_equal(model.item_features.feature_ids[:, 0].numpy(), expected[:, 0])


def test_training_with_features_needs_an_item_table(tmp_path):
    interactions, _ = _synthetic_with_features(tmp_path)
    build_sequences(interactions, dataset_name="plain").save(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="has no item table"):
        _train(tmp_path, str(tmp_path / "plain"))


def test_training_with_movielens_genres(tmp_path):
    _train(tmp_path, "ml-100k", "--raw_dir", str(shared_dataset("ml-100k")), "--max_seq_len", "10")
    model = AutoModel.from_pretrained(tmp_path / "run" / "best_model")
    assert model.config.item_feature_names == ["genres"] and model.config.item_feature_vocab_sizes == [19]
    assert model.config.item_feature_max_values == [6]
    assert int((model.item_features.feature_ids[1:] > 0).sum(1).min()) == 1  # every film has a genre


def test_reproduction_ablation_trains_every_run_with_genres(tmp_path):
    tiny = ["--max_seq_len", "20", "--hidden_size", "16", "--batch_size", "32"]
    reproduction = reproduce(
        "ml-100k",
        tmp_path,
        models=["sasrec"],
        seeds=[1],
        raw_dir=str(shared_dataset("ml-100k")),
        reduced=True,
        train_flags=tiny,
        item_features=True,
    )
    (record,) = reproduction.records
    assert record.flags[2:4] == ["--item_features", "true"]
    assert "--item_features true" in record.command
    model = AutoModel.from_pretrained(tmp_path / "sasrec" / "seed_1" / "best_model")
    assert model.config.item_feature_names == ["genres"]
    assert load_item_features(tmp_path / "data") is not None
