"""The embedded SmolLM2-135M (a real pretrained model, offline): loaded once for this module."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

from hiedit_env.env import REWARD_TERMS
from hiedit_env.score import score_pairs
from hiedit_env.tokens import encode_pair

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def smol_env():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make("HiEdit-v0", model="smollm2-135m", dataset="default", num_edits=3)
    yield env
    env.close()


def test_embedded_model_loads_offline(smol_env):
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    config = smol_env.unwrapped.model.config
    assert config.model_type == "llama"
    assert config.num_hidden_layers == 30
    assert config.hidden_size == 576


def test_default_preset_is_the_middle_down_projections(smol_env):
    names = smol_env.unwrapped.candidate_modules
    assert names == [f"model.layers.{i}.mlp.down_proj" for i in range(6, 24)]
    assert len(names) == 18
    assert smol_env.action_space["layers"].shape == (18,)


def test_knows_a_fact_under_teacher_forcing(smol_env):
    env = smol_env.unwrapped
    env.reset(seed=0)  # the base weights are the ones in the model
    pair = encode_pair(env.tokenizer, "The capital of France is", "Paris")
    scores = score_pairs(env.model, [pair], env.tokenizer.pad_token_id)
    assert float(scores.accuracy[0]) == 1.0
    assert float(scores.nll[0]) < 2.0


def test_short_episode_with_a_constant_action(smol_env):
    env = smol_env
    env.reset(seed=0)
    action = {"layers": np.ones(18, np.float32), "update": np.zeros(18, np.float32)}
    terminated, steps = False, 0
    while not terminated:
        _, reward, terminated, truncated, info = env.step(action)
        steps += 1
        assert isinstance(reward, float) and np.isfinite(reward) and truncated is False
        for term in REWARD_TERMS:
            assert 0.0 <= info[term] <= 1.0, term
    assert steps == 3
    metrics = info["episode_metrics"]
    for key in ("ES", "GS", "LS", "LS_answer", "mean", "ES_gen", "GS_gen", "ES_first_20pct"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["layers_per_edit"] == 18.0 and metrics["candidates"] == 18
