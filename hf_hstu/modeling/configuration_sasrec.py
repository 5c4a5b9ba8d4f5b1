"""SASRec model configuration."""

from huggingface_hub.dataclasses import strict
from transformers.utils.type_validators import interval

from .configuration_recommender import SequentialRecommenderConfig


@strict
class SASRecConfig(SequentialRecommenderConfig):
    r"""
    Configuration of [`SASRecModel`] (Kang & McAuley, ICDM 2018) as the HSTU paper's baseline: the same embeddings,
    L2 output, losses and similarity as HSTU, with softmax self-attention and a ReLU feed-forward block.

    Args:
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Number of transformer blocks.
        num_attention_heads (`int`, *optional*, defaults to 1):
            Attention heads; must divide `hidden_size`.
        intermediate_size (`int`, *optional*):
            Feed-forward hidden size; defaults to `hidden_size`.
        attention_dropout (`float`, *optional*, defaults to 0.2):
            Dropout on the attention probabilities.
        hidden_dropout (`float`, *optional*, defaults to 0.2):
            Dropout inside the feed-forward block.
        layer_norm_eps (`float`, *optional*, defaults to 1e-8):
            Epsilon of the layer norms.
    """

    model_type = "sasrec"

    num_hidden_layers: int = interval(min=1)(default=2)
    num_attention_heads: int = interval(min=1)(default=1)
    intermediate_size: int | None = None
    attention_dropout: float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.2)
    hidden_dropout: float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.2)
    layer_norm_eps: float = interval(min=0.0, exclude_min=True)(default=1e-8)

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = self.hidden_size
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: the heads must split the hidden size evenly."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )


__all__ = ["SASRecConfig"]
