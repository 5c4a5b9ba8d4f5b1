"""Recommendations in raw item ids: a trained model together with the item vocabulary saved beside it."""

import numbers
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

    def _check_inputs(
        self,
        histories: Sequence[Sequence[RawId]],
        timestamps: Sequence[Sequence[int]] | None,
        request_times: Sequence[int] | None,
        allow_past_request_times: bool,
    ) -> None:
        """Raise a ValueError naming the argument and the row of the first inconsistency of `recommend`'s inputs."""
        if not histories or any(len(history) == 0 for history in histories):
            raise ValueError("every history needs at least one item.")
        if timestamps is None and self.model.requires_timestamps:
            raise ValueError(
                "timestamps is required: this model reads the time of each event (config.use_time_bias=True). Pass "
                "one list of unix seconds per history."
            )
        if request_times is None and self.model.requires_target_timestamps:
            raise ValueError(
                "request_times is required: this model conditions on the time of the request "
                "(config.use_time_bias=True). Pass the unix time at which each user is served, one per history."
            )
        for name, values in (("timestamps", timestamps), ("request_times", request_times)):
            if values is not None and len(values) != len(histories):
                raise ValueError(f"{name} has {len(values)} rows but there are {len(histories)} histories.")
        for row, time in enumerate(request_times or ()):
            whole = isinstance(time, float) and time.is_integer()
            if not (whole or isinstance(time, numbers.Integral)) or isinstance(time, bool):
                raise ValueError(f"request_times[{row}] = {time!r} is not a whole number of unix seconds.")
        if timestamps is None:
            return
        for row, (history, times) in enumerate(zip(histories, timestamps, strict=True)):
            if len(history) != len(times):
                raise ValueError(f"history {row} has {len(history)} items but {len(times)} timestamps.")
            if request_times is not None and not allow_past_request_times and request_times[row] < max(times):
                raise ValueError(
                    f"request_times[{row}] = {request_times[row]} is before the last event of history {row} (at "
                    f"{max(times)}). Pass the time at which the user is served, or allow_past_request_times=True "
                    "to replay a past request."
                )

    def recommend(
        self,
        histories: Sequence[Sequence[RawId]],
        timestamps: Sequence[Sequence[int]] | None = None,
        request_times: Sequence[int] | None = None,
        k: int = 10,
        filter_seen: bool = True,
        candidates: Sequence[RawId] | None = None,
        allow_past_request_times: bool = False,
        cold_start_items: bool = False,
    ) -> list[list[tuple[RawId, float]]]:
        """The k best (raw item id, score) pairs for each history (raw item ids, oldest first).

        Args:
            histories: one list of raw item ids per user; an id unknown to the vocabulary raises a KeyError naming it.
            timestamps: unix seconds of each history's events (required by models with a time bias).
            request_times: unix seconds at which each user is served (required by models with a time bias); not
                before the last event of the user's history.
            k: recommendations per user.
            filter_seen: never recommend an item of the user's history.
            candidates: raw item ids to rank instead of the whole catalogue.
            allow_past_request_times: accept request times before the last event of a history (e.g. to replay a
                past request on a history that already holds what came after it).
            cold_start_items: score the items that never occurred in training from their features alone (models with
                item features; see `SequentialRecommenderPreTrainedModel.item_weight`).
        """
        self._check_inputs(histories, timestamps, request_times, allow_past_request_times)
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
            target_timestamps=(
                torch.tensor([int(time) for time in request_times], device=device)
                if request_times is not None
                else None
            ),
            k=k,
            filter_seen=filter_seen,
            cold_start_items=cold_start_items,
            candidate_ids=torch.from_numpy(self.vocabulary.encode(candidates)).to(device) if candidates else None,
        )
        return [
            list(zip(self.vocabulary.decode(ids), scores, strict=True))
            for ids, scores in zip(output.item_ids.tolist(), output.scores.tolist(), strict=True)
        ]
