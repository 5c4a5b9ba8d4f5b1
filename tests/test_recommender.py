"""Recommendations in raw item ids through the vocabulary saved beside a checkpoint."""

import pytest
import torch
from recommender_testing import NUM_ITEMS, tiny_model

from hf_hstu import Recommender
from hf_hstu.data import ItemVocabulary

RAW_IDS = [f"B{number:04d}" for number in range(NUM_ITEMS)]  # string ids, like Amazon ASINs


@pytest.fixture
def checkpoint(tmp_path):
    model = tiny_model("hstu").eval()
    model.save_pretrained(tmp_path)
    ItemVocabulary(RAW_IDS).save(tmp_path)
    return tmp_path


def test_recommends_raw_ids_like_the_model(checkpoint):
    recommender = Recommender.from_pretrained(checkpoint)
    histories = [["B0003", "B0007", "B0001"], ["B0020"]]
    times = [[100, 200, 300], [50]]
    recommendations = recommender.recommend(histories, times, request_times=[400, 400], k=4)

    ids = torch.tensor([[4, 8, 2], [21, 0, 0]])
    expected = recommender.model.recommend(
        input_ids=ids,
        timestamps=torch.tensor([[100, 200, 300], [50, 0, 0]]),
        target_timestamps=torch.tensor([400, 400]),
        k=4,
    )
    assert [[item for item, _ in row] for row in recommendations] == [
        [RAW_IDS[i - 1] for i in row] for row in expected.item_ids.tolist()
    ]
    torch.testing.assert_close(torch.tensor([[s for _, s in row] for row in recommendations]), expected.scores)
    assert not {"B0003", "B0007", "B0001"} & {item for item, _ in recommendations[0]}

    restricted = recommender.recommend(histories, times, request_times=[400, 400], k=2, candidates=["B0010", "B0011"])
    assert {item for row in restricted for item, _ in row} <= {"B0010", "B0011"}


def test_bad_input_is_named(checkpoint):
    recommender = Recommender.from_pretrained(checkpoint)
    with pytest.raises(KeyError, match="B9999"):
        recommender.recommend([["B0001", "B9999"]], [[1, 2]], request_times=[3])
    with pytest.raises(ValueError, match="history 0 has 2 items but 1 timestamps"):
        recommender.recommend([["B0001", "B0002"]], [[1]], request_times=[3])
    with pytest.raises(ValueError, match="request_times is required"):
        recommender.recommend([["B0001"]], [[1]])
    with pytest.raises(ValueError, match="every history needs at least one item"):
        recommender.recommend([[]])
    with pytest.raises(ValueError, match="do not belong together"):
        Recommender(recommender.model, ItemVocabulary(RAW_IDS[:5]))
