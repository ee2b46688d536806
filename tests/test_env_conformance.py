"""Conformance: Gymnasium's and SB3's environment checkers, and a synchronous vector env."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

# The observation (and low-rank action) Boxes are unbounded on purpose; gymnasium says so.
pytestmark = pytest.mark.filterwarnings("ignore:.*Box (observation|action) space (minimum|maximum) value")


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_gymnasium_check_env(make_env, model):
    env = make_env(model, num_edits=3)
    check_env(env.unwrapped)


def test_gymnasium_check_env_low_rank(make_env):
    env = make_env("test-tiny-llama", num_edits=3, update_mode="low_rank", rank=2)
    check_env(env.unwrapped)


def test_gymnasium_check_env_with_layer_budget(make_env):
    env = make_env("test-tiny-gpt2", num_edits=3, layer_budget=2, render_mode="ansi")
    check_env(env.unwrapped)


def test_stable_baselines3_check_env(make_env):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make_env("test-tiny-gpt2", num_edits=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env.unwrapped, warn=True)
    messages = [str(w.message) for w in caught]
    # SB3 takes no Dict action space and says so; that is the one warning it may give about actions.
    unexpected = [m for m in messages if "action" in m.lower() and "Dict or Tuple space" not in m]
    assert unexpected == []


def test_sb3_step_outputs_have_python_types(make_env, helpers):
    env = make_env("test-tiny-gpt2", num_edits=2).unwrapped
    env.reset(seed=0)
    _, reward, terminated, truncated, _ = env.step(helpers.full_action(env))
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool


def test_sync_vector_env():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vec = gym.make_vec(
            "HiEdit-v0", num_envs=2, vectorization_mode="sync", model="test-tiny-gpt2", dataset="default", num_edits=2
        )
    try:
        obs, _ = vec.reset(seed=0)
        n = len(vec.envs[0].unwrapped.candidate_modules)
        assert obs["layers"].shape == (2, n, 6)
        assert vec.observation_space.contains(obs)
        vec.action_space.seed(0)
        for step in range(3):  # the third step auto-resets both sub-environments
            action = vec.action_space.sample()
            assert action["layers"].shape == (2, n) and action["update"].shape == (2, n)
            obs, rewards, terminated, truncated, infos = vec.step(action)
            assert rewards.shape == (2,) and np.all(np.isfinite(rewards))
            assert terminated.tolist() == ([True, True] if step == 1 else [False, False])
            assert not truncated.any()
        envs = [e.unwrapped for e in vec.envs]
        assert envs[0] is not envs[1] and envs[0].model is envs[1].model
        # Different sub-environment seeds draw different records.
        assert [r.index for r in envs[0].episode_records()] != [r.index for r in envs[1].episode_records()]
    finally:
        vec.close()


def test_importing_the_environment_leaves_the_agents_libraries_out():
    """``import hiedit_env`` is the environment alone: no SB3, Ray, matplotlib or agent zoo behind it."""
    import subprocess
    import sys

    code = (
        "import sys, hiedit_env; print(sorted(m for m in ('stable_baselines3', 'sb3_contrib', 'matplotlib', 'ray', "
        "'hiedit_agents') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
