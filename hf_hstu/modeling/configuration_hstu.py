"""HSTU model configuration."""

from huggingface_hub.dataclasses import strict
from transformers.utils.type_validators import interval

from .configuration_recommender import SequentialRecommenderConfig


@strict
class HSTUConfig(SequentialRecommenderConfig):
    r"""
    Configuration of [`HSTUModel`], the Hierarchical Sequential Transduction Unit of "Actions Speak Louder than
    Words" (Zhai et al., ICML 2024). Defaults are the paper's MovieLens-1M settings. Shared fields (catalogue,
    preprocessing, loss, similarity) are documented in [`SequentialRecommenderConfig`].

    Args:
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Number of HSTU layers.
        num_attention_heads (`int`, *optional*, defaults to 1):
            Attention heads H.
        attention_dim (`int`, *optional*, defaults to 50):
            Query/key size per head (d_qk).
        linear_dim (`int`, *optional*, defaults to 50):
            Value/gate size per head (d_v).
        linear_dropout (`float`, *optional*, defaults to 0.2):
            Dropout before the output projection of each layer.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the pointwise attention weights. Off by default: the research code takes a rate but never
            applies it. With a rate > 0 the Triton kernels (which have no dropout) give way to the eager reference.
        max_output_len (`int`, *optional*, defaults to 11):
            Added to the token length to form the fixed attention normalisation n = max_tokens + max_output_len
            (200 + 11 = 211 for the paper's MovieLens settings).
        use_position_bias (`bool`, *optional*, defaults to `True`):
            Learned relative position bias w_p[N - 1 + j - i].
        use_time_bias (`bool`, *optional*, defaults to `True`):
            Learned bias on log-bucketed time gaps between the predicted event and each key. When on, `recommend`
            needs the request time (`target_timestamps`).
        num_time_buckets (`int`, *optional*, defaults to 128):
            Largest time bucket (the table has `num_time_buckets + 1` weights).
        time_bucket_divisor (`float`, *optional*, defaults to 0.301):
            bucket = floor(ln(max(|dt|, 1)) / divisor), clamped to [0, num_time_buckets].
        concat_ua (`bool`, *optional*, defaults to `False`):
            Project [u, a, u * a] instead of u * a.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the affine-free layer norms.

    Initialisation (the research code's `hstu.py`): uvqk projection and relative bias tables normal with std
    `initializer_range`; output projection xavier-uniform weight and PyTorch's default uniform bias
    (±1/sqrt(fan_in)); every input-preprocessor and similarity matrix xavier-normal (see
    [`SequentialRecommenderConfig`]).
    """

    model_type = "hstu"

    num_hidden_layers: int = interval(min=1)(default=2)
    num_attention_heads: int = interval(min=1)(default=1)
    attention_dim: int = interval(min=1)(default=50)
    linear_dim: int = interval(min=1)(default=50)
    linear_dropout: float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.2)
    attention_dropout: float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.0)
    max_output_len: int = interval(min=0)(default=11)
    use_position_bias: bool = True
    use_time_bias: bool = True
    num_time_buckets: int = interval(min=1)(default=128)
    time_bucket_divisor: float = interval(min=0.0, exclude_min=True)(default=0.301)
    concat_ua: bool = False
    layer_norm_eps: float = interval(min=0.0, exclude_min=True)(default=1e-6)

    @property
    def attention_normalization(self) -> int:
        """The fixed n that divides SiLU(scores): the longest token sequence plus `max_output_len`."""
        return self.max_tokens + self.max_output_len


__all__ = ["HSTUConfig"]
