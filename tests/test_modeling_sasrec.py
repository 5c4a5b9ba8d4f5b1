"""SASRec-specific tests: the research code's layer-norm layout, the activation switch, and checkpoints saved before
those fields."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from recommender_testing import right_padded_batch, tiny_model

from hf_hstu import SASRecModel
from hf_hstu.modeling.modeling_sasrec import SASRecFeedForward

# A tiny SASRec saved by the code before `hidden_act` and `post_attention_layernorm_affine` (commit 4bb3c54), with the
# user embeddings it gave on a fixed batch.
MAIN_CHECKPOINT = Path(__file__).parent / "fixtures" / "sasrec_main_checkpoint"


def test_a_checkpoint_saved_before_the_layout_fields_loads_as_before():
    model, info = SASRecModel.from_pretrained(MAIN_CHECKPOINT, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert model.config.post_attention_layernorm_affine and model.config.hidden_act == "relu"
    assert model.config.training_window == "max_seq_len" and model.config.bce_temperature is None
    expected = torch.load(MAIN_CHECKPOINT / "expected.pt")
    torch.testing.assert_close(model.eval()(**expected["batch"]).user_embeddings, expected["user_embeddings"])


def test_research_layout_has_affine_free_layer_norms():
    """x = FFN(LayerNorm(Q + MHA(Q, x, x))) * mask, Q = LayerNorm(x), neither norm with parameters."""
    model = tiny_model("sasrec", post_attention_layernorm_affine=False).eval()
    assert not any("layernorm" in name for name, _ in model.named_parameters())
    block = model.layers[0]
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 16, generator=generator)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    query = F.layer_norm(hidden, (16,), eps=1e-8)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    attended, _ = block.self_attn(query, hidden, hidden, attn_mask=causal, key_padding_mask=~mask, need_weights=False)
    expected = block.feed_forward(F.layer_norm(query + attended, (16,), eps=1e-8)) * mask.unsqueeze(-1)
    with torch.no_grad():
        torch.testing.assert_close(block(hidden, mask), expected)
    # At initialisation (scale 1, shift 0) the affine layout computes the same; its extra parameters are the only
    # difference between the state dicts.
    affine = tiny_model("sasrec", post_attention_layernorm_affine=True).eval()
    missing, unexpected = affine.load_state_dict(model.state_dict(), strict=False)
    assert sorted(missing) == [f"layers.{i}.post_attention_layernorm.{p}" for i in (0, 1) for p in ("bias", "weight")]
    assert not unexpected
    batch = right_padded_batch()
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(affine(**inputs).user_embeddings, model(**inputs).user_embeddings)


@pytest.mark.parametrize(("name", "activation"), [("relu", F.relu), ("gelu", F.gelu)])
def test_feed_forward_activation(name, activation):
    model = tiny_model("sasrec", hidden_act=name)
    feed_forward: SASRecFeedForward = model.layers[0].feed_forward.eval()
    z = torch.randn(3, 16)
    up, down = feed_forward.up_proj, feed_forward.down_proj
    expected = z + activation(z @ up.weight.T + up.bias) @ down.weight.T + down.bias
    with torch.no_grad():
        torch.testing.assert_close(feed_forward(z), expected)
