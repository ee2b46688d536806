"""Bad ``gym.make`` arguments: a ValueError that names the argument, before any work is done."""

from __future__ import annotations

import math

import pytest

from hiedit_env import EditObjective, RewardWeights

# gym.make warns about an unknown render mode itself before the environment refuses it.
pytestmark = pytest.mark.filterwarnings("ignore:.*possible render_modes")


@pytest.mark.parametrize(
    "name,value",
    [
        ("w_edit", -1.0),
        ("w_generalization", math.nan),
        ("w_locality", "1.0"),
        ("w_sparsity", math.inf),
        ("w_retention", -0.1),
        ("w_update_norm", "0"),
        ("w_edit", True),
    ],
)
def test_bad_reward_weight(make_env, name, value):
    with pytest.raises(ValueError, match=name):
        make_env("test-tiny-gpt2", **{name: value})


def test_grouped_and_flat_arguments_build_the_same_environment(make_env, helpers):
    flat = make_env(
        "test-tiny-gpt2", w_edit=0.5, w_sequence=1.0, back_depth=2, locality_depth="back_depth", kl_weight=0.5
    ).unwrapped
    grouped = make_env(
        "test-tiny-gpt2",
        reward=RewardWeights(edit=0.5, sequence=1.0),
        objective={"back_depth": 2, "locality_depth": "back_depth", "kl_weight": 0.5},
    ).unwrapped
    assert flat.reward == grouped.reward == RewardWeights(edit=0.5, sequence=1.0)
    assert (
        flat.edit_objective
        == grouped.edit_objective
        == EditObjective(back_depth=2, locality_depth="back_depth", kl_weight=0.5)
    )
    assert (
        (flat.back_depth, flat.locality_depth, flat.kl_weight)
        == (grouped.back_depth, grouped.locality_depth, grouped.kl_weight)
        == (2, 2, 0.5)
    )
    steps = []
    for env in (flat, grouped):
        env.reset(seed=0)
        steps.append(env.step(helpers.full_action(env, 1.0, 0.5)))
    assert steps[0][1] == steps[1][1]
    assert {k: v for k, v in steps[0][4].items() if k != "episode_metrics"} == {
        k: v for k, v in steps[1][4].items() if k != "episode_metrics"
    }


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"reward": RewardWeights(), "w_edit": 1.0}, "reward= and w_edit both set reward: pass one of them"),
        (
            {"objective": {"chunk": 2}, "objective_chunk": 2, "back_depth": 1},
            "objective= and back_depth, objective_chunk both set objective: pass one of them",
        ),
        ({"reward": {"w_edit": 1.0}}, r"reward has unknown field\(s\) \['w_edit'\]"),
        ({"objective": 3}, r"objective must be EditObjective\(...\) or a mapping of its fields, got int"),
        ({"reward": {"edit": -1.0}}, "reward weight w_edit must be a finite number >= 0"),
    ],
)
def test_a_group_given_twice_or_wrongly_is_one_clear_error(make_env, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_env("test-tiny-gpt2", **kwargs)


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"num_edits": 61}, "num_edits"),  # the shipped set has 60 records
        ({"num_edits": 0}, "num_edits"),
        ({"num_edits": -3}, "num_edits"),
        ({"num_edits": 2.5}, "num_edits"),
        ({"layer_budget": 5}, "layer_budget"),  # the tiny models have 4 candidates
        ({"layer_budget": 0}, "layer_budget"),
        ({"update_mode": "dense"}, "update_mode"),
        ({"eta_range": (0.2, 0.002)}, "eta_range"),
        ({"eta_range": (0.0, 0.1)}, "eta_range"),
        ({"eta_range": (math.nan, 0.1)}, "eta_range"),
        ({"eta_range": 0.1}, "eta_range"),
        ({"eta_range": ("a", "b")}, "eta_range"),
        ({"render_mode": "human"}, "render_mode"),
        ({"max_update_ratio": 0.0}, "max_update_ratio"),
        ({"time_decay": 1.5}, "time_decay"),
        ({"kl_weight": -1.0}, "kl_weight"),
        ({"back_depth": -1}, "back_depth"),
        ({"retention_window": 0}, "retention_window"),
        ({"rank": 0}, "rank"),
        ({"split": "validation"}, "split"),
        ({"on_bad_record": "ignore"}, "on_error"),
        ({"dtype": "float8"}, "dtype"),
        ({"instance_layer": 99}, "instance_layer"),
    ],
)
def test_bad_argument_names_itself(make_env, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        make_env("test-tiny-gpt2", **kwargs)


def test_num_edits_larger_than_a_small_data_set(make_env, tmp_path):
    import json

    rows = [
        {
            "prompt": f"P{i} is",
            "target_new": "x",
            "ground_truth": "y",
            "rephrase_prompt": f"R{i} is",
            "locality_prompt": "L is",
            "locality_ground_truth": "z",
        }
        for i in range(3)
    ]
    path = tmp_path / "three.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"num_edits=4 .*3 records"):
        make_env("test-tiny-llama", dataset=str(path), num_edits=4)
    make_env("test-tiny-llama", dataset=str(path), num_edits=3)  # the boundary is fine


def test_layer_budget_equal_to_candidates_is_fine(make_env):
    env = make_env("test-tiny-gpt2", layer_budget=4)
    assert env.unwrapped.layer_budget == 4
