"""The SB3 baselines: level wrappers (checkers, exact-k masks, action mapping) and the five algorithms
trained, saved, loaded, resumed and evaluated through ``hiedit train`` / ``hiedit evaluate`` on a tiny model."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from hiedit_agents import agent_class
from hiedit_agents.cli import main
from hiedit_agents.sb3 import SB3_AGENTS, load_hyperparams
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hiedit_env.wrappers import ChooseLayers, ChooseLayersInTurn, EmitStepSizes, FlatAction

MODEL = "test-tiny-llama"  # 4 candidate modules
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*Box (observation|action) space (minimum|maximum) value"),
    pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version"),
]


WRAPPERS = {
    "ChooseLayers": lambda env: ChooseLayers(env, editor=0.0),
    "ChooseLayersInTurn": lambda env: ChooseLayersInTurn(env, editor=0.0, k=2),
    "EmitStepSizes": lambda env: EmitStepSizes(env),
    "EmitStepSizes-tied": lambda env: EmitStepSizes(env, layers=[1, 3], tied=True),
    "FlatAction": lambda env: FlatAction(env, k=2),
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrappers_pass_both_env_checkers(name, make_env):
    wrapped = WRAPPERS[name](make_env(MODEL, num_edits=3).unwrapped)
    gym_check_env(wrapped, skip_render_check=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(wrapped, warn=True)
    assert not [w for w in caught if "action" in str(w.message).lower()], [str(w.message) for w in caught]


def test_choose_layers_in_turn_edits_exactly_k_with_masks(make_env, helpers):
    env = make_env(MODEL, num_edits=2).unwrapped
    wrapped = ChooseLayersInTurn(env, editor=0.0, k=2)
    observation, _ = wrapped.reset(seed=0)
    assert observation["chosen"].tolist() == [0, 0, 0, 0] and wrapped.action_masks().all()
    before = helpers.snapshot(env)
    observation, reward, terminated, _, info = wrapped.step(3)
    # The first choice only records the layer: no reward, no edit, layer 3 masked out.
    assert (reward, terminated) == (0.0, False) and "episode_metrics" not in info
    assert wrapped.action_masks().tolist() == [True, True, True, False]
    assert observation["chosen"].tolist() == [0, 0, 0, 1] and helpers.same_weights(before, helpers.snapshot(env))
    # A layer already taken (an agent ignoring the masks) becomes the lowest free one: layer 0.
    observation, reward, _, _, info = wrapped.step(3)
    assert info["layers_chosen"] == [0, 3] and reward > 0 and not helpers.same_weights(before, helpers.snapshot(env))
    assert observation["chosen"].tolist() == [0, 0, 0, 0] and env.edit_index == 1
    with pytest.raises(ValueError, match=r"layer choice must be in \[0, 4\)"):
        wrapped.step(7)


def test_flat_action_takes_the_top_k_scores_and_their_step_sizes(make_env):
    env = make_env(MODEL, num_edits=2).unwrapped
    wrapped = FlatAction(env, k=2)
    observation, info = wrapped.reset(seed=0)
    action = wrapped.env_action(np.array([0.1, 0.9, -0.5, 0.9, 0.2, -0.3, 0.4, 1.0], np.float32), observation, info)
    assert action["layers"].tolist() == [0, 1, 0, 1] and action["update"].tolist() == pytest.approx(
        [0.2, -0.3, 0.4, 1.0]
    )
    with pytest.raises(ValueError, match="expects 8 numbers"):
        wrapped.env_action(np.zeros(4), observation, info)
    with pytest.raises(ValueError, match="NaN"):
        wrapped.env_action(np.full(8, np.nan), observation, info)


def test_emit_step_sizes_layers_and_tied_steps(make_env):
    env = make_env(MODEL, num_edits=2).unwrapped
    observation, info = env.reset(seed=0)
    tied = EmitStepSizes(env, layers=[0, 2], tied=True)
    assert tied.action_space.shape == (1,)
    action = tied.env_action(np.array([0.5], np.float32), observation, info)
    assert action["layers"].tolist() == [1, 0, 1, 0] and action["update"].tolist() == [0.5] * 4
    chosen_by = EmitStepSizes(env, layers=lambda obs, inf: np.array([0, 0, 0, 1], np.float32))
    assert chosen_by.env_action(np.zeros(4), observation, info)["layers"].tolist() == [0, 0, 0, 1]


def test_wrappers_refuse_bad_arguments(make_env):
    step_env = make_env(MODEL, num_edits=2).unwrapped
    with pytest.raises(ValueError, match=r"step-size action in \[-1, 1\]"):
        ChooseLayers(step_env, editor=2.0)
    with pytest.raises(ValueError, match="layers must be 'all'"):
        EmitStepSizes(step_env, layers="some")
    with pytest.raises(ValueError, match="non-empty list of indices"):
        EmitStepSizes(step_env, layers=[9])
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\]"):
        FlatAction(step_env, k=5)
    with pytest.raises(ValueError, match="use ChooseLayersInTurn"):
        ChooseLayers(make_env(MODEL, num_edits=2, layer_budget=2).unwrapped)
    with pytest.raises(ValueError, match="disagrees with the environment's layer_budget=2"):
        ChooseLayersInTurn(make_env(MODEL, num_edits=2, layer_budget=2).unwrapped, k=3)
    low_rank = make_env(MODEL, num_edits=2, update_mode="low_rank").unwrapped
    with pytest.raises(ValueError, match="constant-step editor needs update_mode='step_size'"):
        ChooseLayers(low_rank, editor=0.0)
    with pytest.raises(ValueError, match="EmitStepSizes emits step sizes"):
        EmitStepSizes(low_rank)


def _train(out, agent: str, steps: int, kwargs: dict, *extra: str) -> int:
    return main(
        [
            "train",
            "--agent",
            agent,
            "--model",
            MODEL,
            "--dataset",
            "default",
            "--num-edits",
            "5",
            "--steps",
            str(steps),
            "--seed",
            "0",
            "--threads",
            "1",
            "--out",
            str(out),
            "--agent-kwargs",
            json.dumps(kwargs),
            *extra,
        ]
    )


def _evaluate(checkpoint, agent: str, results) -> dict:
    assert (
        main(
            [
                "evaluate",
                "--agent",
                agent,
                "--checkpoint",
                str(checkpoint),
                "--model",
                MODEL,
                "--dataset",
                "default",
                "--num-edits",
                "6",
                "--seed",
                "3",
                "--threads",
                "1",
                "--out",
                str(results),
            ]
        )
        == 0
    )
    return json.loads(results.read_text())


# Small rollouts and an early start so a few hundred agent steps are many updates.
SMALL = {
    "ppo": {"n_steps": 32, "batch_size": 32},
    "a2c": {"n_steps": 8},
    "maskable_ppo": {"n_steps": 64, "batch_size": 32},
    "sac": {"learning_starts": 20},
    "td3": {"learning_starts": 20},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_each_algorithm_trains_saves_loads_and_evaluates(name, tmp_path):
    out = tmp_path / name
    assert _train(out, name, 150, {**SMALL[name], "eval_freq": 0, "checkpoint_freq": 0}) == 0
    stats = json.loads((out / "train_stats.json").read_text())
    per_edit = 2 if name == "maskable_ppo" else 1  # k = 2 of the tiny model's 4 candidates, chosen in turn
    assert stats["agent_steps"] >= 150 * per_edit and stats["optimizer_steps"] > 0
    assert (out / "model.zip").is_file() and json.loads((out / "agent.json").read_text())["config"]["level"]
    results = _evaluate(out, name, tmp_path / "results.json")
    assert results["num_edits"] == 6 and 0.0 <= results["mean"] <= 1.0
    if name in ("maskable_ppo", "td3"):
        assert results["layers_per_edit"] == 2
    elif name == "sac":
        assert results["layers_per_edit"] == 4

    # Loading rebuilds the same policy: the same actions on the same edits.
    cls = agent_class(name)
    env = gym.make(
        "HiEdit-v0",
        model=MODEL,
        dataset="default",
        num_edits=3,
        split="test",
        **cls.env_requirements(json.loads((out / "agent.json").read_text())["config"]),
    )
    first, second = cls.load(out, env), cls.load(out, env)
    observation, info = env.reset(seed=0)
    a, b = first.act(observation, info), second.act(observation, info)
    assert np.array_equal(a["layers"], b["layers"]) and np.allclose(a["update"], b["update"])
    # ... and the same fingerprint, which a changed policy parameter changes
    assert first.fingerprint() == second.fingerprint()
    with torch.no_grad():
        next(second.model.policy.parameters()).add_(1.0)
    assert first.fingerprint() != second.fingerprint()
    env.close()


def test_resume_continues_to_the_total_and_logs_reward_terms(tmp_path):
    out = tmp_path / "sac"
    kwargs = {"learning_starts": 10, "eval_freq": 30, "checkpoint_freq": 20}
    assert _train(out, "sac", 40, kwargs) == 0
    assert json.loads((out / "train_stats.json").read_text())["agent_steps"] == 40
    assert (out / "replay_buffer.pkl").is_file()
    assert _train(out, "sac", 70, {"learning_rate": 0.1}, "--resume") == 2
    assert _train(out, "sac", 70, {}, "--resume") == 0
    stats = json.loads((out / "train_stats.json").read_text())
    assert stats["agent_steps"] == 70 and stats["hyperparams"]["learning_starts"] == 10
    events = EventAccumulator(str(next((out / "tensorboard").glob("sac_*")))).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"edit/edit_success", "edit/locality", "edit/sparsity", "episode/mean", "eval/mean_reward"} <= tags
    assert events.Scalars("edit/edit_success")[-1].step >= 60  # the resumed part logs too


def test_sequence_reward_trains_and_evaluation_leaves_the_reward_out(tmp_path):
    out = tmp_path / "maskable_ppo"
    reward = {"w_edit": 0.0, "w_generalization": 0.0, "w_locality": 0.0, "w_sparsity": 0.0, "w_sequence": 1.0}
    kwargs = {
        **SMALL["maskable_ppo"],
        "env_kwargs": {**reward, "eta_range": [1e-3, 1e-2]},
        "eval_freq": 0,
        "checkpoint_freq": 0,
    }
    assert _train(out, "maskable_ppo", 20, kwargs) == 0
    events = EventAccumulator(str(next((out / "tensorboard").glob("maskable_ppo_*")))).Reload()
    assert "edit/sequence_gain" in events.Tags()["scalars"]
    # Evaluating needs what shapes the agent's view (the step-size range), not the reward.
    config = json.loads((out / "agent.json").read_text())["config"]
    cls = agent_class("maskable_ppo")
    assert cls.env_requirements(config)["w_sequence"] == 1.0
    assert cls.acting_requirements(config) == {"update_mode": "step_size", "eta_range": [1e-3, 1e-2]}
    assert 0.0 <= _evaluate(out, "maskable_ppo", tmp_path / "results.json")["mean"] <= 1.0


def test_evaluation_callback_needs_held_out_edits(tmp_path, capsys):
    kwargs = {"learning_starts": 5, "eval_freq": 10, "checkpoint_freq": 0}
    assert _train(tmp_path / "all", "sac", 12, kwargs, "--split", "all") == 0
    assert "hiedit train: warning: no evaluation callback" in capsys.readouterr().err
    out = tmp_path / "other_file"
    assert _train(out, "sac", 12, {**kwargs, "eval_dataset": "default"}, "--split", "all") == 0
    events = EventAccumulator(str(next((out / "tensorboard").glob("sac_*")))).Reload()
    assert "eval/mean_reward" in events.Tags()["scalars"]


def test_cli_overrides_and_bad_hyperparameters(tmp_path, capsys):
    out = tmp_path / "ppo"
    assert (
        _train(
            out, "ppo", 32, {"n_steps": 32, "batch_size": 16, "learning_rate": 0.005, "eval_freq": 0, "normalize": True}
        )
        == 0
    )
    config = json.loads((out / "agent.json").read_text())["config"]
    assert config["learning_rate"] == 0.005 and config["policy"] == "MultiInputPolicy"  # the rest from ppo.yml
    assert (out / "vecnormalize.pkl").is_file()
    loaded = agent_class("ppo").load(out, gym.make("HiEdit-v0", model=MODEL, dataset="default", num_edits=2))
    assert loaded.vecnormalize is not None and not loaded.vecnormalize.training
    assert _train(tmp_path / "bad", "ppo", 8, {"learning_startz": 3}) == 2
    assert _train(tmp_path / "bad2", "ppo", 8, {"env_wrapper": [{"gymnasium.wrappers:FlattenObservation": {}}]}) == 2
    assert _train(tmp_path / "bad3", "noop", 8, {}, "--resume") == 2
    err = capsys.readouterr().err
    assert "unexpected keyword argument 'learning_startz'" in err
    assert "must start with exactly one level wrapper" in err
    assert "cannot resume" in err


def test_flattened_observations_and_two_envs_in_one_process(tmp_path):
    out = tmp_path / "a2c"
    wrappers = [{"hiedit_env.wrappers:ChooseLayers": {"editor": 0.0}}, "gymnasium.wrappers:FlattenObservation"]
    assert _train(tmp_path / "bad", "a2c", 8, {"env_wrapper": wrappers}) == 2  # a Dict policy on a Box
    assert (
        _train(
            out, "a2c", 40, {"env_wrapper": wrappers, "policy": "MlpPolicy", "n_envs": 2, "n_steps": 4, "eval_freq": 0}
        )
        == 0
    )
    assert json.loads((out / "train_stats.json").read_text())["agent_steps"] >= 40
    assert _evaluate(out, "a2c", tmp_path / "results.json")["num_edits"] == 6


def test_copies_in_subprocesses(tmp_path):
    out = tmp_path / "ppo"
    kwargs = {"n_envs": 2, "vec_env": "subproc", "n_steps": 4, "batch_size": 8, "eval_freq": 0}
    assert _train(out, "ppo", 16, kwargs) == 0
    assert json.loads((out / "train_stats.json").read_text())["agent_steps"] >= 16
    assert _train(tmp_path / "bad", "ppo", 8, {"vec_env": "threads"}) == 2


def test_trained_low_level_as_the_editor_of_a_layer_selector(rledit_checkpoint, tmp_path):
    editor_dir = rledit_checkpoint
    wrappers = [
        {"hiedit_env.wrappers:ChooseLayersInTurn": {"editor": {"agent": "rledit", "checkpoint": str(editor_dir)}}}
    ]
    assert agent_class("maskable_ppo").env_requirements({"env_wrapper": wrappers})["update_mode"] == "low_rank"
    out = tmp_path / "maskable"
    assert (
        _train(out, "maskable_ppo", 20, {"env_wrapper": wrappers, "n_steps": 16, "batch_size": 16, "eval_freq": 0}) == 0
    )
    results = _evaluate(out, "maskable_ppo", tmp_path / "results.json")
    assert results["layers_per_edit"] == 2


def test_shipped_hyperparameters_name_level_and_wrapper():
    for cls in SB3_AGENTS:
        hp = load_hyperparams(cls.name)
        assert hp["level"] in ("high", "low", "flat") and hp["env_wrapper"] and hp["n_timesteps"] > 0
