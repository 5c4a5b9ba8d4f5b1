"""The HF `Trainer` trains an HSTUModel on collated sequences (the model computes its loss from `labels`), and the
saved model reloads with `AutoModel`."""

import math

import torch
from transformers import AutoModel, Trainer, TrainingArguments

from hf_hstu import HSTUConfig, HSTUModel
from hf_hstu.data import SequenceCollator, build_sequences, make_synthetic_interactions


def _fixed_batch_loss(model: HSTUModel, batch: dict[str, torch.Tensor], negative_ids: torch.Tensor) -> float:
    """The loss of one batch with given negatives, without dropout: comparable before and after training."""
    model.eval()
    with torch.no_grad():
        return model(**batch, negative_ids=negative_ids).loss.item()


def test_trainer_trains_saves_and_reloads(tmp_path):
    interactions = make_synthetic_interactions(
        num_users=64, num_items=40, num_clusters=4, min_length=6, max_length=24, seed=0
    )
    train_split = build_sequences(interactions, dataset_name="tiny").dataset["train"]
    collator = SequenceCollator(max_seq_len=20)
    torch.manual_seed(0)
    config = HSTUConfig(
        num_items=40,
        max_seq_len=20,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        attention_dim=8,
        linear_dim=8,
        num_negatives=16,
        input_dropout=0.0,
        linear_dropout=0.0,
    )
    model = HSTUModel(config)
    initial = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    batch = collator([train_split[i] for i in range(16)])
    num_supervised = int((batch["attention_mask"].sum(1) - 1).sum())
    negative_ids = torch.randint(1, 41, (num_supervised, 16), generator=torch.Generator().manual_seed(1))
    loss_before = _fixed_batch_loss(model, batch, negative_ids)

    arguments = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        max_steps=6,
        logging_steps=1,
        save_strategy="no",
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=train_split, data_collator=collator)
    trainer.train()

    losses = [record["loss"] for record in trainer.state.log_history if "loss" in record]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] / 2, losses
    for name, tensor in model.state_dict().items():
        assert not torch.equal(tensor, initial[name]), f"{name} did not change"
    assert _fixed_batch_loss(model, batch, negative_ids) < loss_before / 2

    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModel.from_pretrained(tmp_path / "saved")
    assert isinstance(reloaded, HSTUModel)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, atol=0, rtol=0)
    recommend_inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "timestamps")}
    request_times = batch["timestamps"].max(1).values + 60
    expected = model.recommend(**recommend_inputs, target_timestamps=request_times, k=5)
    actual = reloaded.recommend(**recommend_inputs, target_timestamps=request_times, k=5)
    assert torch.equal(actual.item_ids, expected.item_ids)
    torch.testing.assert_close(actual.scores, expected.scores, atol=0, rtol=0)
