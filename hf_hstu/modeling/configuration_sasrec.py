"""SASRec model configuration."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers.utils.type_validators import interval

from .configuration_recommender import SequentialRecommenderConfig


@strict
class SASRecConfig(SequentialRecommenderConfig):
    r"""
    Configuration of [`SASRecModel`] (Kang & McAuley, ICDM 2018) as the HSTU paper's baseline: the same embeddings,
    L2 output, losses and similarity as HSTU, with softmax self-attention and a feed-forward block, laid out as the
    research code's `sasrec.py`: x = FFN(LayerNorm(Q + MHA(Q, x, x))) with Q = LayerNorm(x).

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
        hidden_act (`str`, *optional*, defaults to `"relu"`):
            Activation of the feed-forward block: `"relu"` (the paper) or `"gelu"`.
        post_attention_layernorm_affine (`bool`, *optional*, defaults to `True`):
            Whether the layer norm after attention has a learned scale and shift (`post_attention_layernorm.weight`
            and `.bias`; the layout of checkpoints saved before this field). The research code's layer norms have
            none: the paper presets set `False`.
        layer_norm_eps (`float`, *optional*, defaults to 1e-8):
            Epsilon of the layer norms.

    Initialisation (the research code's `sasrec.py`): attention input and output projections and the feed-forward
    weights xavier-normal; attention biases zero; feed-forward biases PyTorch's default uniform (±1/sqrt(fan_in));
    the affine layer norm (when on) ones and zeros; embeddings and similarity as in [`SequentialRecommenderConfig`].
    """

    model_type = "sasrec"

    num_hidden_layers: int = interval(min=1)(default=2)
    num_attention_heads: int = interval(min=1)(default=1)
    intermediate_size: int | None = None
    attention_dropout: float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.2)
    hidden_dropout: float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.2)
    hidden_act: Literal["relu", "gelu"] = "relu"
    post_attention_layernorm_affine: bool = True
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
