"""`Recommender.recommend` checks its inputs up front and names the argument, the row and the values at fault."""

import pytest
from recommender_testing import NUM_ITEMS, tiny_model

from hf_hstu import Recommender
from hf_hstu.data import ItemVocabulary

RAW_IDS = [f"B{number:04d}" for number in range(NUM_ITEMS)]
HISTORIES = [["B0003", "B0007"], ["B0020"]]
TIMES = [[100, 200], [50]]


@pytest.fixture(scope="module")
def recommender() -> Recommender:
    return Recommender(tiny_model("hstu").eval(), ItemVocabulary(RAW_IDS))


def test_missing_request_times_names_the_argument(recommender):
    with pytest.raises(ValueError, match="request_times is required") as raised:
        recommender.recommend(HISTORIES, TIMES)
    assert "target_timestamps" not in str(raised.value)
    with pytest.raises(ValueError, match="timestamps is required"):
        recommender.recommend(HISTORIES, request_times=[300, 300])


@pytest.mark.parametrize(
    ("timestamps", "request_times", "message"),
    [
        ([[100, 200]], [300, 300], "timestamps has 1 rows but there are 2 histories"),
        (TIMES, [300], "request_times has 1 rows but there are 2 histories"),
        (TIMES, [300, 300, 300], "request_times has 3 rows but there are 2 histories"),
        ([[100, 200], [50, 60]], [300, 300], "history 1 has 1 items but 2 timestamps"),
    ],
)
def test_lengths_are_checked_up_front(recommender, timestamps, request_times, message):
    with pytest.raises(ValueError, match=message):
        recommender.recommend(HISTORIES, timestamps, request_times=request_times)


def test_request_time_before_the_last_event_is_rejected_unless_allowed(recommender):
    with pytest.raises(ValueError, match=r"request_times\[1\] = 40 is before the last event of history 1 \(at 50\)"):
        recommender.recommend(HISTORIES, TIMES, request_times=[300, 40])
    past = recommender.recommend(HISTORIES, TIMES, request_times=[300, 40], k=3, allow_past_request_times=True)
    assert [len(row) for row in past] == [3, 3]
    # a request at the time of the last event itself is fine
    assert len(recommender.recommend(HISTORIES, TIMES, request_times=[200, 50], k=3)) == 2


def test_request_times_must_be_whole_seconds(recommender):
    with pytest.raises(ValueError, match=r"request_times\[0\] = 300.5 is not a whole number of unix seconds"):
        recommender.recommend(HISTORIES, TIMES, request_times=[300.5, 300])
    with pytest.raises(ValueError, match=r"request_times\[1\] = 'soon' is not a whole number"):
        recommender.recommend(HISTORIES, TIMES, request_times=[300, "soon"])
    as_floats = recommender.recommend(HISTORIES, TIMES, request_times=[300.0, 300.0], k=3)
    assert as_floats == recommender.recommend(HISTORIES, TIMES, request_times=[300, 300], k=3)
