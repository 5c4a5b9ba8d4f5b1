"""Every parameter starts from its intended initialisation (the research code's effective one, stated in the config
docstrings), whichever way a model is made; loading a saved model re-initialises nothing."""

import math

import pytest
import torch
from transformers import AutoModel

from hf_hstu import HSTUConfig, HSTUModel, SASRecConfig, SASRecModel

INPUT_PREPROCESSORS = ("learnable_positional", "rated", "combined_item_rating")
SIMILARITIES = ("dot", "mol", "mol_full")
# Large enough for the standard deviation of each tensor to be estimated within a few percent.
SIZES = dict(num_items=400, max_seq_len=60, hidden_size=48, num_hidden_layers=2, num_attention_heads=2)
HSTU_SIZES = dict(attention_dim=24, linear_dim=24)


def _config(model_type: str, **overrides):
    if model_type == "hstu":
        return HSTUConfig(**{**SIZES, **HSTU_SIZES, **overrides})
    return SASRecConfig(**{**SIZES, "post_attention_layernorm_affine": True, **overrides})


def _xavier_std(tensor: torch.Tensor) -> float:
    fan_out, fan_in = tensor.shape[0], tensor[0].numel()
    return math.sqrt(2.0 / (fan_in + fan_out))


def _intended(model_type: str, name: str, tensor: torch.Tensor, config) -> tuple[str, float]:
    """(distribution, scale) that `name` should start from: ("normal", std), ("truncated", std before the cut at
    two standard deviations), ("uniform", bound), ("zeros", 0) or ("ones", 0)."""
    std = config.initializer_range
    if name == "item_embeddings.weight":
        return "truncated", std
    if name.startswith("input_preprocessor."):
        if model_type == "hstu" or name.endswith("rating_proj.weight"):
            return "normal", _xavier_std(tensor)
        return "truncated", math.sqrt(1.0 / config.hidden_size)
    if name.startswith("similarity."):
        return ("normal", _xavier_std(tensor)) if tensor.dim() > 1 else ("zeros", 0.0)
    if model_type == "hstu":
        if "uvqk_proj" in name or "relative_bias" in name:
            return "normal", std
        if name.endswith("o_proj.weight"):
            return "uniform", math.sqrt(3.0) * _xavier_std(tensor)  # xavier-uniform
        if name.endswith("o_proj.bias"):
            return "uniform", 1.0 / math.sqrt(config.linear_dim * config.num_attention_heads)
    else:
        if name.endswith(("in_proj_weight", "out_proj.weight", "up_proj.weight", "down_proj.weight")):
            return "normal", _xavier_std(tensor)
        if name.endswith(("in_proj_bias", "out_proj.bias", "layernorm.bias")):
            return "zeros", 0.0
        if name.endswith("layernorm.weight"):
            return "ones", 0.0
        if name.endswith(("up_proj.bias", "down_proj.bias")):
            fan_in = config.hidden_size if "up_proj" in name else config.intermediate_size
            return "uniform", 1.0 / math.sqrt(fan_in)
    raise AssertionError(f"no intended initialisation for {name} {tuple(tensor.shape)}")


def assert_intended_initialisation(model, model_type: str) -> None:
    """Each parameter's bounds and standard deviation against its intended distribution (five standard errors)."""
    config = model.config
    for name, parameter in model.named_parameters():
        values = parameter.detach().double()
        if name == "item_embeddings.weight":
            assert values[0].abs().sum() == 0, "the padding row starts at zero"
            values = values[1:]
        kind, scale = _intended(model_type, name, parameter, config)
        values = values.flatten()
        if kind in ("zeros", "ones"):
            assert torch.equal(values, torch.full_like(values, float(kind == "ones"))), name
            continue
        tolerance = 5.0 / math.sqrt(2 * values.numel())  # relative standard error of a sample std, times 5
        if kind == "truncated":
            assert values.abs().max() <= 2 * scale * (1 + 1e-6), (name, values.abs().max().item(), 2 * scale)
            expected_std = 0.8796 * scale  # std of a normal cut at two standard deviations
        elif kind == "uniform":
            assert values.abs().max() <= scale * (1 + 1e-6), (name, values.abs().max().item(), scale)
            expected_std = scale / math.sqrt(3.0)
        else:
            expected_std = scale
        measured = values.std().item()
        assert abs(measured / expected_std - 1) < tolerance, (name, kind, measured, expected_std)
        assert abs(values.mean().item()) < 5 * expected_std / math.sqrt(values.numel()), name


def _build_cases():
    cases = []
    for model_type in ("hstu", "sasrec"):
        for preprocessor in INPUT_PREPROCESSORS:
            cases.append((model_type, {"input_preprocessor": preprocessor}))
        for similarity in SIMILARITIES[1:]:
            cases.append((model_type, {"similarity": similarity}))
    return cases


@pytest.mark.parametrize(("model_type", "options"), _build_cases(), ids=str)
def test_from_config_gives_the_intended_initialisation(model_type, options):
    torch.manual_seed(0)
    model = AutoModel.from_config(_config(model_type, **options))
    assert_intended_initialisation(model, model_type)


@pytest.mark.parametrize("model_type", ["hstu", "sasrec"])
def test_constructor_gives_the_intended_initialisation(model_type):
    torch.manual_seed(1)
    model_class = HSTUModel if model_type == "hstu" else SASRecModel
    assert_intended_initialisation(model_class(_config(model_type)), model_type)


def test_the_two_modules_of_the_issue_at_the_ml_1m_sizes():
    """o_proj and the position table at D = 50: xavier-uniform (std 0.141) and xavier-normal (std ≈ 0.089)."""
    torch.manual_seed(0)
    model = HSTUModel(HSTUConfig(num_items=100))
    assert model.layers[0].attention.o_proj.weight.std().item() == pytest.approx(0.1414, rel=0.05)
    assert model.input_preprocessor.position_embeddings.weight.std().item() == pytest.approx(0.0894, rel=0.05)


@pytest.mark.parametrize(("model_type", "options"), _build_cases(), ids=str)
def test_save_and_load_is_bit_identical(model_type, options, tmp_path):
    torch.manual_seed(2)
    model = AutoModel.from_config(_config(model_type, **options))
    model.save_pretrained(tmp_path)
    torch.manual_seed(3)  # another random state: any re-initialisation would show
    loaded = AutoModel.from_pretrained(tmp_path)
    saved = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


@pytest.mark.parametrize("model_type", ["hstu", "sasrec"])
def test_a_resized_catalogue_gets_the_intended_item_init_and_keeps_the_rest(model_type, tmp_path):
    torch.manual_seed(4)
    model = AutoModel.from_config(_config(model_type))
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path, num_items=700, ignore_mismatched_sizes=True)
    saved = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        if name == "item_embeddings.weight":
            assert tensor.shape == (701, SIZES["hidden_size"])
            assert tensor[0].abs().sum() == 0
            assert tensor.abs().max() <= 0.04 * (1 + 1e-6)
            assert tensor[1:].std().item() == pytest.approx(0.8796 * 0.02, rel=0.05)
        else:
            assert torch.equal(tensor, saved[name]), name
