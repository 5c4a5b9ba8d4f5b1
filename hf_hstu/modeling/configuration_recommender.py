"""Configuration fields shared by every sequential recommender of this package (HSTU, SASRec)."""

import dataclasses
import difflib
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.utils import logging
from transformers.utils.type_validators import interval

logger = logging.get_logger(__name__)

# Keys that transformers itself writes to, or accepts in, a config (config.json of this or an older version, or
# keyword arguments of from_pretrained) without them being fields: they never warn. Keys starting with "_" and
# attributes of PreTrainedConfig (num_labels, torch_dtype, ...) do not warn either.
_TRANSFORMERS_KEYS = frozenset(
    """auto_map model_type attn_implementation experts_implementation per_layer_config use_cache pad_token_id
    bos_token_id eos_token_id sep_token_id decoder_start_token_id tie_word_embeddings is_decoder add_cross_attention
    tie_encoder_decoder cross_attention_hidden_size tokenizer_class prefix task_specific_params finetuning_task
    pruned_heads torchscript use_bfloat16 tf_legacy_loss rope_theta max_length min_length do_sample early_stopping
    num_beams top_k top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size
    encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores return_dict_in_generate
    forced_bos_token_id forced_eos_token_id remove_invalid_values exponential_decay_length_penalty suppress_tokens
    begin_suppress_tokens num_beam_groups diversity_penalty""".split()
)


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

    def __post_init__(self, **kwargs):
        """Warn about keyword arguments (or config.json keys) that are no field of this config, naming the closest
        field: a misspelt field would otherwise be stored as an unused attribute and the default used."""
        fields = [field.name for field in dataclasses.fields(self)]
        kwargs.pop("length_group_size", None)  # a config field before it became a run-time setting of the model
        for name in kwargs:
            if name.startswith("_") or name in _TRANSFORMERS_KEYS or hasattr(PreTrainedConfig, name):
                continue
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            logger.warning(
                f"{type(self).__name__} has no field '{name}': it is stored but the model does not use it.{hint}"
            )
        super().__post_init__(**kwargs)

    @property
    def tokens_per_event(self) -> int:
        """Tokens the input preprocessor makes of one event (2 when items and ratings are separate tokens)."""
        return 2 if self.input_preprocessor == "combined_item_rating" else 1

    @property
    def max_tokens(self) -> int:
        """Longest token sequence the model body sees."""
        return self.max_seq_len * self.tokens_per_event
