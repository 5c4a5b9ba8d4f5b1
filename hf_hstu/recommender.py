"""Recommendations in raw item ids: a trained model together with the item vocabulary saved beside it."""

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from transformers import AutoModel

from .data.vocabulary import ItemVocabulary, RawId
from .modeling.modeling_recommender import SequentialRecommenderPreTrainedModel


class Recommender:
    """A sequential recommender that takes and returns raw item ids (as in the source data, e.g. MovieLens ids or
    ASINs), translating them with the checkpoint's `item_vocabulary.json`.

    ```python
    recommender = Recommender.from_pretrained("outputs/run/best_model")   # or a Hub model id
    recommender.recommend([[1193, 661, 914]], timestamps=[[978300760, 978301968, 978302109]],
                          request_times=[978310000], k=3)   # [[(raw item id, score), ... 3 pairs]]
    ```
    """

    def __init__(self, model: SequentialRecommenderPreTrainedModel, vocabulary: ItemVocabulary) -> None:
        if vocabulary.num_items != model.config.num_items:
            raise ValueError(
                f"The vocabulary has {vocabulary.num_items} items but the model ranks {model.config.num_items}: "
                "they do not belong together."
            )
        self.model = model
        self.vocabulary = vocabulary

    @classmethod
    def from_pretrained(
        cls, model_name_or_path: str | os.PathLike, revision: str | None = None, **model_kwargs
    ) -> "Recommender":
        """Load a checkpoint folder or Hub repository holding a model and its `item_vocabulary.json`."""
        model = AutoModel.from_pretrained(model_name_or_path, revision=revision, **model_kwargs)
        path = Path(model_name_or_path)
        if path.is_dir():
            vocabulary_file = path / ItemVocabulary.file_name
        else:
            vocabulary_file = hf_hub_download(str(model_name_or_path), ItemVocabulary.file_name, revision=revision)
        return cls(model, ItemVocabulary.load(vocabulary_file))

    def recommend(
        self,
        histories: Sequence[Sequence[RawId]],
        timestamps: Sequence[Sequence[int]] | None = None,
        request_times: Sequence[int] | None = None,
        k: int = 10,
        filter_seen: bool = True,
        candidates: Sequence[RawId] | None = None,
    ) -> list[list[tuple[RawId, float]]]:
        """The k best (raw item id, score) pairs for each history (raw item ids, oldest first).

        Args:
            histories: one list of raw item ids per user; an id unknown to the vocabulary raises a KeyError naming it.
            timestamps: unix seconds of each history's events (required by models with a time bias).
            request_times: unix seconds at which each user is served (required by models with a time bias).
            k: recommendations per user.
            filter_seen: never recommend an item of the user's history.
            candidates: raw item ids to rank instead of the whole catalogue.
        """
        if not histories or any(len(history) == 0 for history in histories):
            raise ValueError("every history needs at least one item.")
        if timestamps is not None:
            for row, (history, times) in enumerate(zip(histories, timestamps, strict=True)):
                if len(history) != len(times):
                    raise ValueError(f"history {row} has {len(history)} items but {len(times)} timestamps.")
        width = max(len(history) for history in histories)
        device = self.model.item_embeddings.weight.device
        input_ids = torch.zeros(len(histories), width, dtype=torch.long)
        event_times = torch.zeros(len(histories), width, dtype=torch.long)
        for row, history in enumerate(histories):
            input_ids[row, : len(history)] = torch.from_numpy(self.vocabulary.encode(history))
            if timestamps is not None:
                event_times[row, : len(history)] = torch.tensor(timestamps[row], dtype=torch.long)
        output = self.model.recommend(
            input_ids=input_ids.to(device),
            attention_mask=(input_ids != 0).to(device),
            timestamps=event_times.to(device) if timestamps is not None else None,
            target_timestamps=torch.tensor(request_times, device=device) if request_times is not None else None,
            k=k,
            filter_seen=filter_seen,
            candidate_ids=torch.from_numpy(self.vocabulary.encode(candidates)).to(device) if candidates else None,
        )
        return [
            list(zip(self.vocabulary.decode(ids), scores, strict=True))
            for ids, scores in zip(output.item_ids.tolist(), output.scores.tolist(), strict=True)
        ]
