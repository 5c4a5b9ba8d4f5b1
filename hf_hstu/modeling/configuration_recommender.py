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
        training_window (`str`, *optional*, defaults to `"max_seq_len"`):
            Events of a training sequence (`labels` given) that the loss reads. `"max_seq_len"`: the most recent
            `max_seq_len` (`max_seq_len - 1` supervised positions). `"max_seq_len_plus_one"`: the most recent
            `max_seq_len + 1`, as the research code trains (the paper presets): the model still encodes at most
            `max_seq_len` events, and the extra, most recent one is only the label (and the query time) of the last
            encoded position, so each of the `max_seq_len` positions is supervised.
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
        bce_temperature (`float`, *optional*):
            Temperature of the `"bce"` loss; `None` uses `temperature` (the behaviour before this field). The
            research code's BCE uses 1.0 (the default of `--bce_temperature` in training).
        l2_normalize_item_embeddings (`bool`, *optional*, defaults to `True`):
            Whether the item embeddings are L2-normalised before the `"dot"` and `"mol_full"` similarities score
            them (the research code normalises them). The simplified `"mol"` always reads them raw.
        similarity (`str`, *optional*, defaults to `"dot"`):
            `"dot"`: dot product with the item embeddings. `"mol"`: a simplified mixture of logits (linear
            component projections and linear gates). `"mol_full"`: the research code's mixture of logits (Zhai et
            al., KDD 2023; `rails/similarities/mol`): SwiGLU MLPs make `mol_num_user_components` query and
            `mol_num_item_components` item components (L2-normalised), whose dot products divided by
            `mol_temperature` are combined with softmax gates from a query MLP, an item MLP and an MLP of the logits
            (`glu_silu`: silu(g_q * g_x + g_qx)), with dropout on the gate probabilities.
        mol_num_user_components (`int`, *optional*, defaults to 4):
            User-side embedding components of the mixture of logits.
        mol_num_item_components (`int`, *optional*, defaults to 4):
            Item-side embedding components of the mixture of logits.
        mol_component_dim (`int`, *optional*, defaults to 32):
            Dimension of each mixture-of-logits component.
        mol_query_hidden_dim (`int`, *optional*, defaults to 128):
            `"mol_full"`: hidden size of the query-component MLP (SwiGLU, then linear).
        mol_item_hidden_dim (`int`, *optional*, defaults to 128):
            `"mol_full"`: hidden size of the item-component MLP.
        mol_query_dropout (`float`, *optional*, defaults to 0.0):
            `"mol_full"`: dropout on the input of the query-component MLP.
        mol_item_dropout (`float`, *optional*, defaults to 0.0):
            `"mol_full"`: dropout on the input of the item-component MLP.
        mol_gating_query_hidden_dim (`int`, *optional*, defaults to 128):
            `"mol_full"`: hidden size of the query gating MLP.
        mol_gating_item_hidden_dim (`int`, *optional*, defaults to 128):
            `"mol_full"`: hidden size of the item gating MLP.
        mol_gating_qi_hidden_dim (`int`, *optional*, defaults to 128):
            `"mol_full"`: hidden size of the gating MLP of the component logits (0: one linear layer).
        mol_gating_item_dropout (`float`, *optional*, defaults to 0.0):
            `"mol_full"`: dropout on the input of the item gating MLP.
        mol_gating_qi_dropout (`float`, *optional*, defaults to 0.0):
            `"mol_full"`: dropout on the input of the logit gating MLP.
        mol_softmax_dropout (`float`, *optional*, defaults to 0.0):
            `"mol_full"`: dropout on the gate probabilities (renormalised to sum 1) in training.
        mol_temperature (`float`, *optional*, defaults to 1.0):
            `"mol_full"`: the component logits are the component dot products divided by this.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the initialisation of the item embeddings (truncated normal, cut at two standard
            deviations, as the research code) and of HSTU's uvqk projection and relative bias tables (normal).
        item_feature_names (`list[str]`, *optional*):
            Names of the categorical item features (e.g. `["genres"]`); `None`: items are ids only.
        item_feature_vocab_sizes (`list[int]`, *optional*):
            Categories of each feature (codes `1..size`; 0 = no value). Given together with the two fields around it.
            Their embeddings are initialised as the item embeddings (truncated normal, padding row zero).
        item_feature_max_values (`list[int]`, *optional*):
            Most categories one item has in each feature (a film's genres: several).
        item_feature_pooling (`str`, *optional*, defaults to `"mean"`):
            How an item's categories of one feature are combined: `"mean"` or `"sum"` of their embeddings. An item
            is embedded as its id embedding plus the sum over features (`ItemFeatureEmbeddings`), both in the input
            tokens and in the item table the similarity scores; the item -> category table is a buffer of the model.

    Initialisation (the research code's effective one; `_init_weights`): item embeddings truncated normal as above
    (row 0, the padding id, zero: the research code leaves a random, never-used row there). The parameters of the
    input preprocessor (position and rating embeddings, the `"rated"` projection) are xavier-normal in HSTU (its
    `reset_params` re-initialises everything outside the HSTU blocks and the item embeddings; ≈0.089 for the position
    table at the ML-1M sizes, where the research table's 211 rows give 0.088) and, in SASRec (whose reset skips the
    preprocessor), the preprocessor's own truncated normal with std sqrt(1 / hidden_size) cut at two standard
    deviations (xavier-normal for the `"rated"` projection, which the research code does not have). Similarity
    weights (`"mol"`, `"mol_full"`) are xavier-normal and their biases zero in both models (the research models'
    resets re-initialise the similarity's matrices; its SwiGLU keeps the bias as a (1, 2h) matrix that the reset
    would also draw: here it is a vector, zero). The model-specific parts are stated in each model's config.
    """

    num_items: int = interval(min=1)(default=1)
    max_seq_len: int = interval(min=1)(default=200)
    training_window: Literal["max_seq_len", "max_seq_len_plus_one"] = "max_seq_len"
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
    bce_temperature: float | None = None
    l2_normalize_item_embeddings: bool = True
    similarity: Literal["dot", "mol", "mol_full"] = "dot"
    mol_num_user_components: int = interval(min=1)(default=4)
    mol_num_item_components: int = interval(min=1)(default=4)
    mol_component_dim: int = interval(min=1)(default=32)
    mol_query_hidden_dim: int = interval(min=1)(default=128)
    mol_item_hidden_dim: int = interval(min=1)(default=128)
    mol_query_dropout: float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.0)
    mol_item_dropout: float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.0)
    mol_gating_query_hidden_dim: int = interval(min=1)(default=128)
    mol_gating_item_hidden_dim: int = interval(min=1)(default=128)
    mol_gating_qi_hidden_dim: int = interval(min=0)(default=128)
    mol_gating_item_dropout: float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.0)
    mol_gating_qi_dropout: float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.0)
    mol_softmax_dropout: float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.0)
    mol_temperature: float = interval(min=0.0, exclude_min=True)(default=1.0)
    initializer_range: float = interval(min=0.0, max=1.0)(default=0.02)
    item_feature_names: list[str] | None = None
    item_feature_vocab_sizes: list[int] | None = None
    item_feature_max_values: list[int] | None = None
    item_feature_pooling: Literal["mean", "sum"] = "mean"

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

    def validate_bce_temperature(self):
        """Part of `@strict` validation: a BCE temperature, when given, is positive."""
        if self.bce_temperature is not None and not self.bce_temperature > 0:
            raise ValueError(f"bce_temperature must be positive or None, got {self.bce_temperature}.")

    def validate_item_features(self):
        """Part of `@strict` validation: the three item-feature lists are given together, one entry per feature."""
        lists = {
            "item_feature_names": self.item_feature_names,
            "item_feature_vocab_sizes": self.item_feature_vocab_sizes,
            "item_feature_max_values": self.item_feature_max_values,
        }
        given = [name for name, value in lists.items() if value is not None]
        if not given:
            return
        if len(given) != 3 or len({len(value) for value in lists.values()}) != 1 or not self.item_feature_names:
            raise ValueError(
                f"item_feature_names, item_feature_vocab_sizes and item_feature_max_values must be given together, "
                f"with one entry per feature; got {lists}."
            )
        for name in ("item_feature_vocab_sizes", "item_feature_max_values"):
            if any(not isinstance(value, int) or value < 1 for value in lists[name]):
                raise ValueError(f"{name} must hold positive integers, got {lists[name]}.")

    @property
    def has_item_features(self) -> bool:
        """Whether items are embedded with categorical features besides their id."""
        return self.item_feature_names is not None

    @property
    def max_training_events(self) -> int:
        """Most recent events of a training sequence (with labels) the loss reads (see `training_window`)."""
        return self.max_seq_len + (self.training_window == "max_seq_len_plus_one")

    @property
    def tokens_per_event(self) -> int:
        """Tokens the input preprocessor makes of one event (2 when items and ratings are separate tokens)."""
        return 2 if self.input_preprocessor == "combined_item_rating" else 1

    @property
    def max_tokens(self) -> int:
        """Longest token sequence the model body sees."""
        return self.max_seq_len * self.tokens_per_event
