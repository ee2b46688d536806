"""Models: built-in tiny models, the process cache, module presets and clear load errors."""

from __future__ import annotations

import pytest
from torch import nn
from transformers.pytorch_utils import Conv1D

from hiedit_env import ModelLoadError
from hiedit_env.models import candidate_modules, load_shared_model, module_dims, weight_as_linear


@pytest.mark.parametrize("name,model_type", [("test-tiny-gpt2", "gpt2"), ("test-tiny-llama", "llama")])
def test_tiny_model_loads_by_name_and_is_cached(name, model_type):
    first = load_shared_model(name)
    second = load_shared_model(name)
    assert first is second
    assert first.model is second.model
    assert first.model.config.model_type == model_type
    assert not first.model.training
    assert not any(p.requires_grad for p in first.model.parameters())
    assert first.tokenizer.pad_token_id is not None


@pytest.mark.parametrize("name", ["test-tiny-gpt2", "test-shape-gpt2-xl"])
def test_loading_a_model_leaves_the_callers_random_stream(name, monkeypatch):
    """A seeded run draws the same numbers whether or not its process had loaded the model before."""
    import torch

    from hiedit_env import models

    monkeypatch.setattr(models, "_CACHE", {})  # loaded afresh: the random weights are drawn now
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    load_shared_model(name)
    assert torch.equal(torch.rand(4), expected)


def test_tiny_gpt2_preset_is_conv1d_mlp_c_proj():
    model = load_shared_model("test-tiny-gpt2").model
    names = candidate_modules(model)
    assert names == [f"transformer.h.{i}.mlp.c_proj" for i in range(model.config.n_layer)]
    for name in names:
        module = model.get_submodule(name)
        assert isinstance(module, Conv1D)
        d_in, d_out = module_dims(module)
        assert (d_in, d_out) == (4 * model.config.n_embd, model.config.n_embd)
        assert weight_as_linear(module).shape == (d_out, d_in)


def test_tiny_llama_preset_is_linear_down_proj():
    model = load_shared_model("test-tiny-llama").model
    names = candidate_modules(model)
    assert names == [f"model.layers.{i}.mlp.down_proj" for i in range(model.config.num_hidden_layers)]
    for name in names:
        module = model.get_submodule(name)
        assert isinstance(module, nn.Linear)
        assert module_dims(module) == (model.config.intermediate_size, model.config.hidden_size)


def test_modules_as_list_and_regex():
    model = load_shared_model("test-tiny-llama").model
    chosen = ["model.layers.2.mlp.down_proj", "model.layers.1.mlp.up_proj"]
    assert candidate_modules(model, chosen) == chosen
    regex = r"model\.layers\.[12]\.mlp\.(gate|up)_proj"
    assert candidate_modules(model, regex) == [
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
        "model.layers.2.mlp.gate_proj",
        "model.layers.2.mlp.up_proj",
    ]


def test_modules_through_the_environment(make_env):
    env = make_env("test-tiny-gpt2", modules=r"transformer\.h\.[13]\.mlp\.c_(fc|proj)")
    names = env.unwrapped.candidate_modules
    assert names == [
        "transformer.h.1.mlp.c_fc",
        "transformer.h.1.mlp.c_proj",
        "transformer.h.3.mlp.c_fc",
        "transformer.h.3.mlp.c_proj",
    ]
    assert env.action_space["layers"].shape == (4,)
    assert env.observation_space["layers"].shape[0] == 4
    env = make_env("test-tiny-gpt2", modules=["transformer.h.2.mlp.c_proj"])
    assert env.unwrapped.candidate_modules == ["transformer.h.2.mlp.c_proj"]


def test_unknown_model_name_fails_fast_with_the_name():
    with pytest.raises(ModelLoadError, match="no-such-model-xyz"):
        load_shared_model("no-such-model-xyz")


def test_missing_local_path_is_reported_as_a_path():
    with pytest.raises(ModelLoadError, match=r"\./missing/model.*does not exist"):
        load_shared_model("./missing/model")


def test_model_error_through_gym_make():
    import gymnasium as gym

    with pytest.raises(ModelLoadError, match="no-such-model-xyz"):
        gym.make("HiEdit-v0", model="no-such-model-xyz", dataset="default", num_edits=2)


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_model_argument_must_be_a_non_empty_string(bad):
    with pytest.raises(ModelLoadError, match="non-empty string"):
        load_shared_model(bad)


def test_unknown_module_names_are_listed():
    model = load_shared_model("test-tiny-gpt2").model
    with pytest.raises(ValueError, match=r"not found.*transformer\.h\.9\.mlp\.c_proj"):
        candidate_modules(model, ["transformer.h.0.mlp.c_proj", "transformer.h.9.mlp.c_proj"])
    with pytest.raises(ValueError, match="matches no module"):
        candidate_modules(model, r"nothing\.like\.this")
    with pytest.raises(ValueError, match="at least one"):
        candidate_modules(model, [])


def test_unknown_module_through_the_environment(make_env):
    with pytest.raises(ValueError, match="no_such_module"):
        make_env("test-tiny-llama", modules=["model.layers.0.mlp.no_such_module"])


@pytest.mark.parametrize("name,kind", [("transformer.h.0.ln_1", "LayerNorm"), ("transformer.h.0.mlp", "GPT2MLP")])
def test_non_linear_module_is_refused(name, kind):
    model = load_shared_model("test-tiny-gpt2").model
    with pytest.raises(ValueError, match=rf"{name}.*{kind}.*nn\.Linear"):
        candidate_modules(model, [name])


def test_duplicate_module_is_refused():
    model = load_shared_model("test-tiny-llama").model
    with pytest.raises(ValueError, match="twice"):
        candidate_modules(model, ["model.layers.0.mlp.down_proj", "model.layers.0.mlp.down_proj"])


def test_bad_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        load_shared_model("test-tiny-gpt2", dtype="float8")
