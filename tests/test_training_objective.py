"""The training objective in one place: negatives per loss (one for BCE), in-batch negatives deduplicated as in the
research code, uniform negatives from the catalogue or from the ids seen in training, and the same rows on N
processes as on one."""

from types import SimpleNamespace

import torch
from recommender_testing import right_padded_batch, tiny_model
from test_training_loop import tiny_dataset  # noqa: F401 (fixture)

from hf_hstu.data import load_sequences
from hf_hstu.modeling.losses import sample_negatives
from hf_hstu.training.objective import GlobalNegativeSampler, TrainingObjective, train_item_ids


def test_in_batch_negatives_are_drawn_from_the_distinct_positives():
    positives = torch.tensor([5] * 99 + [7])
    negatives = sample_negatives(positives, 40, 30, "in_batch", torch.Generator().manual_seed(0))
    assert negatives.shape == (100, 40) and set(negatives.unique().tolist()) == {5, 7}
    assert 0.45 < (negatives == 7).float().mean() < 0.55  # not 1 in 100 as when drawn from the positives


def test_bce_scores_one_negative_per_position_in_the_loop_and_the_benchmark():
    seen = []
    for loss, expected in (("bce", 1), ("sampled_softmax", 8)):
        model = tiny_model(loss=loss)
        model.register_forward_pre_hook(
            lambda _, args, kwargs: seen.append(kwargs["negative_ids"].shape), with_kwargs=True
        )
        batch = right_padded_batch()
        TrainingObjective(model.config, seed=0).loss(model, batch)
        assert seen[-1] == (int((batch["attention_mask"].sum(1) - 1).sum()), expected)


def test_negatives_from_the_ids_seen_in_training(tiny_dataset):  # noqa: F811
    train = load_sequences(tiny_dataset)["train"].select(range(5))
    seen = train_item_ids(train)
    assert seen.tolist() == sorted({item for row in train["item_ids"] for item in row})
    sampler = GlobalNegativeSampler(num_items=40, num_negatives=50, seed=0, item_ids=seen)
    negatives = sampler.sample(30)
    assert negatives.shape == (30, 50) and set(negatives.unique().tolist()) == set(seen.tolist())


class FakeAccelerator(SimpleNamespace):
    """Two processes holding `counts` supervised positions; this one is `process_index`."""

    def gather(self, tensor):
        return torch.tensor(self.counts)


def test_two_processes_get_the_rows_of_one_process():
    single = GlobalNegativeSampler(30, 4, seed=3).sample(7)
    first = GlobalNegativeSampler(30, 4, seed=3).sample(
        3, FakeAccelerator(num_processes=2, process_index=0, counts=[3, 4], device="cpu")
    )
    second = GlobalNegativeSampler(30, 4, seed=3).sample(
        4, FakeAccelerator(num_processes=2, process_index=1, counts=[3, 4], device="cpu")
    )
    assert torch.equal(torch.cat([first, second]), single)
