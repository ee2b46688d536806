"""Episodes: registration, the step loop, final metrics, exact reset, seeding, isolation between
environments that share one cached model, no-op and real edits, and no autograd graph growth."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from hiedit_env.action import step_size_from_action
from hiedit_env.env import REWARD_ARGUMENTS, REWARD_TERMS
from hiedit_env.score import score_pairs
from hiedit_env.tokens import encode_record

FINAL_KEYS = (
    "ES",
    "GS",
    "LS",
    "LS_answer",
    "mean",
    "ES_gen",
    "GS_gen",
    "layers_per_edit",
    "candidates",
    "seconds_per_edit",
    "ES_first_20pct",
)
SHARE_KEYS = ("ES", "GS", "LS", "LS_answer", "mean", "ES_gen", "GS_gen", "ES_first_20pct")


@pytest.mark.parametrize("env_id", ["HiEdit-v0", "hiedit_env:HiEdit-v0"])
def test_gym_make_forms(env_id):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make(env_id, model="test-tiny-gpt2", dataset="default", num_edits=5)
    try:
        assert env.unwrapped.num_edits == 5
        assert env.spec.id == "HiEdit-v0"
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        assert info["edit_index"] == 0
    finally:
        env.close()


def _run_episode(env, action_fn, seed=0, options=None):
    obs, _ = env.reset(seed=seed, options=options)
    observations, rewards, infos = [obs], [], []
    terminated = False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(action_fn(env))
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        assert truncated is False
    return observations, rewards, infos


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_full_episode(make_env, helpers, model, zsre_format_path):
    env = make_env(model, num_edits=5, dataset=zsre_format_path)
    observations, rewards, infos = [], [], []
    obs, _ = env.reset(seed=0)
    n = len(env.unwrapped.candidate_modules)
    for t in range(5):
        action = {"layers": (np.arange(n) % 2 == t % 2).astype(np.float32), "update": np.full(n, 0.5, np.float32)}
        obs, reward, terminated, truncated, info = env.step(action)
        assert isinstance(reward, float) and np.isfinite(reward)
        assert terminated is (t == 4)
        assert truncated is False
        assert env.observation_space.contains(obs)
        assert info["edit_index"] == t
        for term in REWARD_TERMS:
            assert 0.0 <= info[term] <= 1.0, term
        w = env.unwrapped.reward
        # evaluation leaves exactly these arguments out (Agent.acting_requirements)
        assert set(REWARD_ARGUMENTS) == {"reward"} | {f"w_{name}" for name in vars(w)}
        expected = (
            w.edit * info["edit_success"]
            + w.generalization * info["generalization"]
            + w.locality * info["locality"]
            + w.sparsity * info["sparsity"]
            + w.retention * info["retention"]
            - w.update_norm * info["update_norm"]
            + w.sequence * info["sequence_gain"]
        )
        assert reward == pytest.approx(expected)
        assert ("episode_metrics" in info) is (t == 4)
        rewards.append(reward)
        observations.append(obs)
        infos.append(info)
    metrics = infos[-1]["episode_metrics"]
    # Edits 0, 2, 4 changed the even-indexed candidates, edits 1 and 3 the odd ones.
    share = [metrics["module_share"][name] for name in env.unwrapped.candidate_modules]
    assert share == pytest.approx([0.6 if i % 2 == 0 else 0.4 for i in range(n)])
    for key in FINAL_KEYS:
        assert key in metrics, key
    for key in SHARE_KEYS:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["mean"] == pytest.approx((metrics["ES"] + metrics["GS"] + metrics["LS"]) / 3)
    assert metrics["candidates"] == n
    assert metrics["num_edits"] == 5
    assert metrics["layers_per_edit"] == pytest.approx(np.mean([i["num_layers_chosen"] for i in infos]))
    assert metrics["seconds_per_edit"] > 0
    assert "efficacy" not in metrics  # ZsRE: no sequence-level CounterFact protocol
    assert set(metrics["protocols"]) >= {"ES", "GS", "LS", "LS_answer"}
    assert len(metrics["per_edit"]["ES"]) == 5
    assert metrics["ES_first_20pct"] == pytest.approx(metrics["per_edit"]["ES"][0])
    assert observations[-1]["progress"][0] == pytest.approx(1.0)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(helpers.full_action(env))


def test_step_before_reset_needs_reset(make_env, helpers):
    env = make_env("test-tiny-llama").unwrapped
    with pytest.raises(gym.error.ResetNeeded):
        env.step(helpers.full_action(env))


def test_counterfact_episode_reports_efficacy(make_env, helpers):
    env = make_env("test-tiny-llama", num_edits=3)  # the shipped set is CounterFact-style
    _, _, infos = _run_episode(env, lambda e: helpers.full_action(e, 1.0, 0.0))
    metrics = infos[-1]["episode_metrics"]
    assert 0.0 <= metrics["efficacy"] <= 1.0
    assert "efficacy" in metrics["protocols"]


def test_es_at_edit_is_the_mean_of_the_step_edit_success(make_env, helpers):
    env = make_env("test-tiny-gpt2", num_edits=4, eta_range=(0.01, 0.2))
    _, _, infos = _run_episode(env, lambda e: helpers.full_action(e, 1.0, 1.0))
    metrics = infos[-1]["episode_metrics"]
    assert metrics["ES_at_edit"] == pytest.approx(np.mean([info["edit_success"] for info in infos]))
    assert "ES_at_edit" in metrics["protocols"]


def test_reset_restores_weights_bit_for_bit(make_env, helpers):
    env = make_env("test-tiny-gpt2", num_edits=5)
    env.reset(seed=0)
    first = helpers.snapshot(env)
    assert helpers.same_weights(first, helpers.base_weights(env))
    _run_episode(env, lambda e: helpers.full_action(e, 1.0, 1.0), seed=1)
    assert not any(torch.equal(a, b) for a, b in zip(first, helpers.snapshot(env)))
    env.reset(seed=2)
    assert helpers.same_weights(first, helpers.snapshot(env))
    # Also in the middle of an episode.
    env.step(helpers.full_action(env, 1.0, 1.0))
    env.step(helpers.full_action(env, 1.0, 1.0))
    env.reset(seed=3)
    assert helpers.same_weights(first, helpers.snapshot(env))


def test_same_seed_same_episode(make_env, helpers):
    a = make_env("test-tiny-llama", num_edits=4)
    b = make_env("test-tiny-llama", num_edits=4)
    action = lambda e: helpers.full_action(e, 1.0, 0.3)  # noqa: E731
    obs_a, rew_a, _ = _run_episode(a, action, seed=7)
    obs_b, rew_b, _ = _run_episode(b, action, seed=7)
    obs_c, rew_c, _ = _run_episode(a, action, seed=7)  # the same env again, after an episode
    for other_obs, other_rew in ((obs_b, rew_b), (obs_c, rew_c)):
        assert rew_a == other_rew
        for x, y in zip(obs_a, other_obs):
            for key in x:
                assert np.array_equal(x[key], y[key]), key


def test_reset_leaves_torch_global_random_state_alone(make_env, helpers):
    env = make_env()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    env.reset(seed=5)
    env.step(helpers.full_action(env))
    assert torch.equal(torch.rand(3), expected)


def test_different_seeds_draw_different_records(make_env):
    env = make_env("test-tiny-gpt2", num_edits=5).unwrapped
    env.reset(seed=0)
    first = [r.index for r in env.episode_records()]
    env.reset(seed=1)
    second = [r.index for r in env.episode_records()]
    assert first != second
    assert len(set(first)) == 5  # drawn without replacement
    env.reset(seed=0)
    assert [r.index for r in env.episode_records()] == first


def test_options_pick_the_records(make_env, helpers):
    env = make_env("test-tiny-gpt2", num_edits=5).unwrapped
    env.reset(seed=0, options={"records": [10, 3]})
    assert env.episode_records() == [env.records[10], env.records[3]]
    assert env.current_record == env.records[10]
    *_, terminated, _, _ = env.step(helpers.full_action(env))
    assert not terminated
    assert env.current_record == env.records[3]
    *_, terminated, _, info = env.step(helpers.full_action(env))
    assert terminated and info["episode_metrics"]["num_edits"] == 2
    for bad in ([], [len(env.records)], [-1]):
        with pytest.raises(ValueError, match="records"):
            env.reset(seed=0, options={"records": bad})


def test_environments_sharing_a_model_do_not_see_each_others_edits(make_env, helpers):
    a = make_env("test-tiny-llama", num_edits=4).unwrapped
    b = make_env("test-tiny-llama", num_edits=4).unwrapped
    assert a.model is b.model
    a.reset(seed=0)
    b.reset(seed=1)
    base = [w.clone() for w in helpers.base_weights(b)]
    a.step(helpers.full_action(a, 1.0, 1.0))
    a.step(helpers.full_action(a, 1.0, 1.0))
    edited_a = helpers.snapshot(a)
    assert not any(torch.equal(x, y) for x, y in zip(edited_a, base))
    assert helpers.same_weights(helpers.snapshot(b), base)
    # B's scores are computed on B's (unedited) weights: a no-op step keeps locality at 1.
    *_, info = b.step(helpers.full_action(b, 0.0, 0.0))
    assert info["locality"] == 1.0
    assert helpers.same_weights(helpers.snapshot(a), edited_a)
    # An environment created while A's edits are swapped in starts from the base too.
    c = make_env("test-tiny-llama", num_edits=4).unwrapped
    assert c.base_weight_norms() == pytest.approx(b.base_weight_norms(), rel=1e-6)
    c.reset(seed=2)
    assert helpers.same_weights(helpers.snapshot(c), base)
    assert helpers.same_weights(helpers.snapshot(a), edited_a)


def test_base_norms_do_not_depend_on_other_envs_edits(make_env, helpers):
    a = make_env("test-tiny-gpt2", num_edits=4).unwrapped
    a.reset(seed=0)
    expected = [float(w.norm()) for w in helpers.base_weights(a)]
    a.step(helpers.full_action(a, 1.0, 1.0))
    a.candidate_weights()  # A's edited weights are the ones in the model now
    b = make_env("test-tiny-gpt2", num_edits=4).unwrapped
    assert b.base_weight_norms() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_no_op_action_changes_nothing(make_env, helpers, model):
    env = make_env(model, num_edits=4)
    env.reset(seed=5)
    before = helpers.snapshot(env)
    _, _, infos = _run_episode(env, lambda e: helpers.full_action(e, 0.0, 1.0), seed=5)
    assert helpers.same_weights(before, helpers.snapshot(env))
    for info in infos:
        assert info["locality"] == 1.0
        assert info["layers_chosen"] == []
        assert info["sparsity"] == 1.0
        assert info["update_norm"] == 0.0
    metrics = infos[-1]["episode_metrics"]
    assert metrics["LS"] == 1.0
    assert metrics["layers_per_edit"] == 0.0


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_a_strong_step_reduces_the_edit_loss(make_env, helpers, model):
    env = make_env(model, num_edits=5, eta_range=(0.01, 0.2)).unwrapped
    pad = env.tokenizer.pad_token_id
    for record in (0, 7, 42):
        env.reset(seed=0, options={"records": [record, record + 1]})
        before = env.edit_trace.loss
        pair = encode_record(env.tokenizer, env.current_record).edit
        assert float(score_pairs(env.model, [pair], pad).nll[0]) == pytest.approx(before, rel=1e-5)
        env.step(helpers.full_action(env, 1.0, 1.0))
        after = float(score_pairs(env.model, [pair], pad).nll[0])
        assert after < before - 0.1, (record, before, after)


def test_the_smallest_step_still_lowers_the_loss(make_env, helpers):
    """Every step-size action moves down the gradient: even the smallest step lowers the loss a little."""
    env = make_env("test-tiny-gpt2", num_edits=5).unwrapped
    env.reset(seed=0, options={"records": [2, 3]})
    before = env.edit_trace.loss
    pair = encode_record(env.tokenizer, env.current_record).edit
    env.step(helpers.full_action(env, 1.0, -1.0))
    after = float(score_pairs(env.model, [pair], env.tokenizer.pad_token_id).nll[0])
    assert after < before


def test_no_graph_growth_over_many_steps(make_env, helpers):
    env = make_env("test-tiny-gpt2", num_edits=21, evaluate_generation=False).unwrapped
    grad_mode = torch.is_grad_enabled()
    env.reset(seed=0)
    for _ in range(20):
        env.step(helpers.full_action(env, 1.0, 0.0))
    assert env.edit_index == 20
    assert torch.is_grad_enabled() == grad_mode
    trace = env.edit_trace
    for tensor in [*trace.keys, *trace.grads, trace.hidden]:
        assert not tensor.requires_grad
        assert tensor.grad_fn is None
    for w in env.candidate_weights():
        assert not w.requires_grad and w.grad_fn is None
    for param in env.model.parameters():
        assert not param.requires_grad and param.grad is None


def test_observation_features(make_env, helpers):
    env = make_env("test-tiny-llama", num_edits=3).unwrapped
    obs, _ = env.reset(seed=0)
    n = len(env.candidate_modules)
    assert obs["instance"].shape == (2 * env.model.config.hidden_size,)
    assert obs["layers"].shape == (n, 6)
    assert all(v.dtype == np.float32 for v in obs.values())
    assert np.all(np.isfinite(obs["layers"]))
    assert np.allclose(obs["layers"][:, 3], np.linspace(0, 1, n))  # depth of blocks 0..3
    assert np.all(obs["layers"][:, 4] == 0) and np.all(obs["layers"][:, 5] == 0)
    assert np.array_equal(obs["progress"], [0.0, 0.0])
    layers = np.array([1, 0, 0, 1], np.float32)
    obs, *_ = env.step({"layers": layers, "update": np.ones(n, np.float32)})
    eta_max = env.eta_range[1]
    assert np.allclose(obs["layers"][:, 4], [eta_max, 0, 0, eta_max], rtol=1e-3)  # a step of eta_max * ||W0||
    assert np.array_equal(obs["layers"][:, 5], layers)
    assert obs["progress"][0] == pytest.approx(1 / 3)


def test_render_ansi(make_env, helpers):
    env = make_env("test-tiny-gpt2", render_mode="ansi")
    env.reset(seed=0)
    env.step(helpers.full_action(env))
    text = env.render()
    assert isinstance(text, str) and "edit 1/3" in text


@pytest.mark.parametrize("w_sequence", [0.0, 1.0])
def test_retention_and_update_norm_terms(make_env, helpers, w_sequence):
    # With w_sequence the retention window is read from the whole-sequence pass: same numbers.
    env = make_env(
        "test-tiny-llama", num_edits=4, w_retention=1.0, retention_window=2, w_update_norm=0.5, w_sequence=w_sequence
    ).unwrapped
    env.reset(seed=0)
    pad = env.tokenizer.pad_token_id
    records = env.episode_records()
    n = len(env.candidate_modules)
    update = np.linspace(-1, 1, n).astype(np.float32)
    etas = [step_size_from_action(float(u), env.eta_range) for u in update]
    for t in range(4):
        *_, info = env.step({"layers": np.ones(n, np.float32), "update": update})
        past = records[max(0, t - 2) : t]  # the last retention_window edits before this one
        if t == 0:
            assert info["retention"] == 0.0  # nothing to retain yet
        else:
            pairs = [encode_record(env.tokenizer, r).edit for r in past]
            expected = float(score_pairs(env.model, pairs, pad).accuracy.mean())
            assert info["retention"] == pytest.approx(expected, abs=1e-6)
        # Each module moved by eta_i * ||W0||, reported as a share of the cap.
        assert info["update_norm"] == pytest.approx(np.mean(etas) / env.max_update_ratio, rel=1e-3)


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_sequence_gain_adds_up_to_the_end_of_sequence_score(make_env, model):
    env = make_env(
        model, num_edits=6, w_edit=0.0, w_generalization=0.0, w_locality=0.0, w_sparsity=0.0, w_sequence=1.0
    ).unwrapped
    env.reset(seed=3)
    n = len(env.candidate_modules)
    rewards, gains, totals, own = [], [], [], []
    for t in range(6):
        # A strong step on alternating halves: edits land and also disturb the earlier ones.
        layers = (np.arange(n) % 2 == t % 2).astype(np.float32)
        _, reward, terminated, _, info = env.step({"layers": layers, "update": np.full(n, 0.8, np.float32)})
        rewards.append(reward)
        gains.append(info["sequence_gain"])
        own.append((info["edit_success"] + info["generalization"] + info["locality"]) / 3)
        scored = env.evaluate(generation=False)
        totals.append(scored["mean"] * (t + 1))
    assert rewards == pytest.approx(gains)
    # Each gain is the change of the summed per-edit score of all edits so far.
    assert gains == pytest.approx(np.diff([0.0, *totals]).tolist(), abs=1e-5)
    assert sum(gains) == pytest.approx(6 * info["episode_metrics"]["mean"], abs=1e-5)
    # The later edits moved the earlier ones' scores, which the per-edit terms alone never show.
    assert any(abs(g - o) > 1e-3 for g, o in zip(gains[1:], own[1:]))


def test_evaluate_needs_an_applied_edit(make_env):
    env = make_env("test-tiny-gpt2").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="no edit"):
        env.evaluate()
