"""Configuration fields shared by every sequential recommender of this package (HSTU, SASRec)."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.utils.type_validators import interval


@strict
class SequentialRecommenderConfig(PreTrainedConfig):
    r"""
    Shared configuration of a sequential recommender: the item catalogue, the input and output processing,
    the training objective and the similarity used both by the loss and by `recommend`.

    Args:
        num_items (`int`):
            Size of the item catalogue. Item ids are `1..num_items`; `0` is the padding id.
        max_seq_len (`int`, *optional*, defaults to 200):
            Most recent events of a history the model reads; longer histories are truncated to their most recent
            `max_seq_len` events.
        hidden_size (`int`, *optional*, defaults to 50):
            Embedding and model dimension D.
        input_preprocessor (`str`, *optional*, defaults to `"learnable_positional"`):
            `"learnable_positional"`: item embedding * sqrt(D) + learned position embedding.
            `"rated"`: as above with a rating embedding concatenated to the item embedding and projected back to D.
            `"combined_item_rating"`: item and rating as separate tokens (the sequence is twice as long); the output
            of each rating token predicts the next item.
        num_ratings (`int`, *optional*, defaults to 5):
            Ratings are `1..num_ratings` (0 = unknown) for the rated preprocessors.
        rating_embedding_dim (`int`, *optional*, defaults to 8):
            Rating embedding size of the `"rated"` preprocessor.
        output_postprocessor (`str`, *optional*, defaults to `"l2_norm"`):
            `"l2_norm"` or `"layer_norm"` (no affine parameters) on the output embeddings.
        input_dropout (`float`, *optional*, defaults to 0.2):
            Dropout on the input embeddings.
        loss (`str`, *optional*, defaults to `"sampled_softmax"`):
            `"sampled_softmax"` (positives against sampled negatives) or `"bce"` (one negative per positive).
        num_negatives (`int`, *optional*, defaults to 128):
            Negatives per position for the sampled softmax.
        negative_sampling (`str`, *optional*, defaults to `"uniform"`):
            `"uniform"` over `1..num_items`, or `"in_batch"` (the other positives of the batch).
        temperature (`float`, *optional*, defaults to 0.05):
            Logits are similarities divided by the temperature.
        similarity (`str`, *optional*, defaults to `"dot"`):
            `"dot"`: dot product of L2-normalised embeddings; `"mol"`: mixture of logits (Zhai et al., KDD 2023).
        mol_num_user_components (`int`, *optional*, defaults to 4):
            User-side embedding components of the mixture of logits.
        mol_num_item_components (`int`, *optional*, defaults to 4):
            Item-side embedding components of the mixture of logits.
        mol_component_dim (`int`, *optional*, defaults to 32):
            Dimension of each mixture-of-logits component.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of embeddings and projections.
    """

    num_items: int = interval(min=1)(default=1)
    max_seq_len: int = interval(min=1)(default=200)
    hidden_size: int = interval(min=1)(default=50)
    input_preprocessor: Literal["learnable_positional", "rated", "combined_item_rating"] = "learnable_positional"
    num_ratings: int = interval(min=1)(default=5)
    rating_embedding_dim: int = interval(min=1)(default=8)
    output_postprocessor: Literal["l2_norm", "layer_norm"] = "l2_norm"
    input_dropout: float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.2)
    loss: Literal["sampled_softmax", "bce"] = "sampled_softmax"
    num_negatives: int = interval(min=1)(default=128)
    negative_sampling: Literal["uniform", "in_batch"] = "uniform"
    temperature: float = interval(min=0.0, exclude_min=True)(default=0.05)
    similarity: Literal["dot", "mol"] = "dot"
    mol_num_user_components: int = interval(min=1)(default=4)
    mol_num_item_components: int = interval(min=1)(default=4)
    mol_component_dim: int = interval(min=1)(default=32)
    initializer_range: float = interval(min=0.0, max=1.0)(default=0.02)

    @property
    def tokens_per_event(self) -> int:
        """Tokens the input preprocessor makes of one event (2 when items and ratings are separate tokens)."""
        return 2 if self.input_preprocessor == "combined_item_rating" else 1

    @property
    def max_tokens(self) -> int:
        """Longest token sequence the model body sees."""
        return self.max_seq_len * self.tokens_per_event
