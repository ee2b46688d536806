"""The agent zoo: registry, heuristics, the learned editors (training, gate gradients, checkpoints) and the CLI.

Tiny random models only: these tests check mechanics (gradients flow, steps are taken, state
round-trips), not editing quality.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import hiedit_agents
import numpy as np
import pytest
import torch
from hiedit_agents import HiEditAgent, agent_class, available_agents, make_agent, run_episode
from hiedit_agents.cli import main
from hiedit_agents.common.checkpoint import CheckpointError
from hiedit_agents.common.env_util import load_for_acting
from hiedit_agents.learned.agent import masked
from hiedit_agents.learned.callbacks import swapped
from hiedit_agents.learned.gate import plackett_luce_log_prob
from hiedit_agents.learned.hypernet import REFRESH_GROWTH, KeyMoment, output_change
from hiedit_agents.selection import gradient_norms
from torch.optim.optimizer import register_optimizer_step_post_hook

from hiedit_env.objective import update_sq_norm

MODEL = "test-tiny-llama"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The CI machine has 2 shared cores: one torch thread avoids oversubscription (10x slower otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def env_for():
    """``env_for(update_mode, **kwargs)``: a training-split environment on the tiny Llama."""
    made: list[gym.Env] = []

    def factory(update_mode: str = "low_rank", **kwargs) -> gym.Env:
        kwargs = {"dataset": "default", "num_edits": 4, "split": "train", "evaluate_generation": False, **kwargs}
        env = gym.make("HiEdit-v0", model=MODEL, update_mode=update_mode, **kwargs)
        made.append(env)
        return env

    yield factory
    for env in made:
        env.close()


def stream_loss(agent, env: gym.Env, seed: int) -> float:
    """Mean objective of the agent's applied updates over one fixed episode (no learning)."""
    observation, info = env.reset(seed=seed)
    losses, terminated = [], False
    while not terminated:
        action = agent.act(observation, info)
        with torch.no_grad():
            losses.append(float(env.unwrapped.objective(action["update"]).total))
        observation, _, terminated, _, info = env.step(action)
    return float(np.mean(losses))


def test_registry_lists_the_zoo():
    # A superset: other parts of the package (the SB3 baselines) register their agents too.
    assert set(available_agents()) >= {"noop", "all", "random_k", "topk_grad", "ft_l", "rledit", "hiedit"}
    with pytest.raises(ValueError, match="unknown agent 'nope'"):
        agent_class("nope")
    with pytest.raises(ValueError, match="cannot load agent"):
        agent_class("no_such_module_xyz:Agent")
    with pytest.raises(ValueError, match="not a subclass"):
        agent_class("json:dumps")


@pytest.mark.parametrize("name", sorted(["noop", "all", "random_k", "topk_grad", "ft_l", "rledit", "hiedit"]))
def test_every_registered_agent_runs_an_episode(name, env_for):
    cls = agent_class(name)
    env = env_for(cls.update_mode, num_edits=3)
    agent = make_agent(name, env)
    metrics = run_episode(agent, env, seed=0, progress=False)
    assert metrics["num_edits"] == 3
    for key in ("ES", "GS", "LS", "mean", "ES_first_20pct"):
        assert 0.0 <= metrics[key] <= 1.0
    expected_layers = {"noop": 0, "all": 4, "rledit": 4}.get(name, 2)  # k defaults to half of 4 candidates
    assert metrics["layers_per_edit"] == expected_layers


def test_agent_refuses_an_environment_of_the_wrong_mode(env_for):
    with pytest.raises(ValueError, match="update_mode='low_rank'"):
        make_agent("hiedit", env_for("step_size"))


@pytest.mark.parametrize("name", ["hiedit", "rledit"])
def test_learning_reduces_the_loss_on_a_fixed_stream(name, env_for):
    env = env_for(num_edits=5)
    torch.manual_seed(0)
    # fast rates: a short test of the mechanics; no validation, which could keep the starting editor
    agent = make_agent(name, env, meta_lr=1e-3, lr_lr=0.2, validation_edits=0)
    before = stream_loss(agent, env, seed=100)
    agent.learn(env, steps=40, seed=100, progress=False)  # the same stream, episode after episode
    after = stream_loss(agent, env, seed=100)
    assert after < before - 0.05, (before, after)


def test_validation_records_are_held_out_of_training(env_for, monkeypatch):
    env = env_for(num_edits=3)
    agent = make_agent("rledit", env, validation_edits=5, validate_every=4)
    resets = []
    original = type(env.unwrapped).reset

    def spy(self, *, seed=None, options=None):
        resets.append(list((options or {})["records"]))
        return original(self, seed=seed, options=options)

    monkeypatch.setattr(type(env.unwrapped), "reset", spy)
    stats = agent.learn(env, steps=10, seed=3, progress=False)
    validation = [r for r in resets if len(r) == 5]
    training = [r for r in resets if len(r) == 3]
    assert all(r == validation[0] for r in validation)
    assert not set(validation[0]) & {i for r in training for i in r}
    # after the first episode, at the first episode end after 4 and after 8 edits (6, 9), after the last edit
    assert [v["after_edits"] for v in stats["validations"]] == [3, 6, 9, 10]
    assert len(training) == 4  # episodes starting at edits 0, 3, 6, 9
    again = make_agent("rledit", env, validation_edits=5, validate_every=4)
    resets.clear()
    again.learn(env, steps=10, seed=3, progress=False)
    assert [r for r in resets if len(r) == 5][0] == validation[0]  # the same seed holds out the same records


def test_an_editor_reading_the_subject_row_emits_rank_one_updates(env_for):
    env = env_for(num_edits=2)
    agent = make_agent("rledit", env, editor_reads="subject")
    observation, _ = env.reset(seed=0)
    action = agent.act(observation, {})
    position = env.unwrapped.subject_position
    for i, (u, v) in enumerate(action["update"]):
        assert u.shape[0] == v.shape[0] == 1
        key = env.unwrapped.edit_trace.keys[i][position]
        # with the full preconditioner, V is the subject's key through the (damped) inverse key moment
        assert torch.allclose(v[0], agent.editor.key_moments[i].solve(key[None], agent.editor.damping, key[None])[0])
    with pytest.raises(ValueError, match="editor_reads must be 'edit', 'objective' or 'subject'"):
        make_agent("rledit", env, editor_reads="prompt")


def test_diagnostics_measure_the_editor_against_its_start(env_for):
    """Until the first optimiser step the editor is its start (alignment and size ratio 1); after steps
    at a large meta learning rate it has moved; drift is each module's net change at the episode's end."""
    env = env_for(num_edits=3)
    torch.manual_seed(0)
    still = make_agent("rledit", env, update_every=100, validation_edits=0)  # one optimiser step, after the last edit
    stats = still.learn(env, steps=6, progress=False)
    assert [d["after_edits"] for d in stats["diagnostics"]] == [3, 6]
    for entry in stats["diagnostics"]:
        assert np.allclose(entry["alignment"], 1, atol=1e-4) and np.allclose(entry["size_ratio"], 1, atol=1e-4)
        assert all(d > 0 for d in entry["drift"]) and np.isfinite(entry["loss"])

    torch.manual_seed(0)
    moving = make_agent("rledit", env, meta_lr=3e-2, validation_edits=0)
    later = moving.learn(env, steps=9, progress=False)["diagnostics"][-1]
    assert np.mean(later["alignment"]) < 0.99 or abs(np.mean(later["size_ratio"]) - 1) > 0.01


def test_weight_drift_is_the_net_change(env_for):
    env = env_for(num_edits=2)
    env.reset(seed=0)
    unwrapped = env.unwrapped
    n = len(unwrapped.candidate_modules)
    assert unwrapped.weight_drift() == [0.0] * n
    first = unwrapped.candidate_modules[0]
    d_in, d_out = unwrapped.module_dims()[0]
    update = torch.ones(1, d_out), torch.ones(1, d_in)
    chosen = np.zeros(n, np.float32)
    chosen[0] = 1
    action = {"layers": chosen, "update": [update] + [None] * (n - 1)}
    env.step(action)
    module = unwrapped.model.get_submodule(first)
    expected = float((module.weight.detach() - unwrapped.shared.base[first]).norm()) / unwrapped.base_weight_norms()[0]
    assert unwrapped.weight_drift()[0] == pytest.approx(expected) and expected > 0
    assert unwrapped.weight_drift()[1:] == [0.0] * (n - 1)


def test_validate_start_keeps_the_untrained_start_unless_training_beats_it(env_for, monkeypatch):
    env = env_for(num_edits=2)
    torch.manual_seed(0)
    agent = make_agent("hiedit", env, meta_lr=1e-2, validation_edits=4, validate_every=2, validate_start=True)
    start = {k: v.clone() for k, v in agent.state_dict()["editor"].items()}
    gate_start = {k: v.clone() for k, v in agent.gate.state_dict().items()}
    scores = iter([0.9, 0.2, 0.5, 0.1, 0.3])

    def fake_validate(env, records, seed, progress):
        return {"ES": 0.0, "GS": 0.0, "LS": 0.0, "mean": next(scores), "ES_first_20pct": 0.0}

    monkeypatch.setattr(agent, "validate", fake_validate)
    stats = agent.learn(env, steps=8, progress=False)
    assert [v["after_edits"] for v in stats["validations"]] == [0, 2, 4, 6, 8]
    assert stats["kept_after_edits"] == 0 and stats["kept_validation_mean"] == 0.9
    kept = agent.editor.state_dict()
    # the start's weights, with the statistics the first episode gathered
    assert all(torch.equal(kept[k], start[k]) for k in start if k in dict(agent.editor.named_parameters()))
    assert not torch.equal(kept["key_norms.0.count"], start["key_norms.0.count"])
    assert all(torch.equal(v, gate_start[k]) for k, v in agent.gate.state_dict().items())
    with pytest.raises(ValueError, match="validate_start .* needs validation_edits > 0"):
        make_agent("rledit", env, validation_edits=0, validate_start=True)


def test_learn_keeps_the_editor_that_validated_best(env_for, monkeypatch):
    env = env_for(num_edits=2)
    torch.manual_seed(0)
    agent = make_agent("hiedit", env, meta_lr=1e-2, validation_edits=4, validate_every=2)
    scores, states = iter([0.2, 0.9, 0.5, 0.1]), []

    def fake_validate(env, records, seed, progress):
        states.append({k: v.clone() for k, v in agent.editor.state_dict().items()})
        return {"ES": 0.0, "GS": 0.0, "LS": 0.0, "mean": next(scores), "ES_first_20pct": 0.0}

    monkeypatch.setattr(agent, "validate", fake_validate)
    stats = agent.learn(env, steps=8, progress=False)
    assert [v["after_edits"] for v in stats["validations"]] == [2, 4, 6, 8]
    assert stats["kept_after_edits"] == 4 and stats["kept_validation_mean"] == 0.9
    assert stats["optimizer_steps"] == 8 and agent.optimizer_steps == 4
    kept = agent.editor.state_dict()
    assert all(torch.equal(kept[k], states[1][k]) for k in kept)
    assert not all(torch.equal(states[1][k], states[3][k]) for k in kept)  # training did move on after it


@contextlib.contextmanager
def tracking_average(params, decay: float):
    """Within the block, the moving average recomputed from the weights after every optimiser step,
    and the raw weights after the last step (two lists that fill in)."""
    expected, live = [p.detach().clone() for p in params], []

    def after_step(optimizer, args, kwargs):
        live[:] = [p.detach().clone() for p in params]
        for e, p in zip(expected, live):
            e.mul_(decay).add_(p, alpha=1 - decay)

    handle = register_optimizer_step_post_hook(after_step)
    try:
        yield expected, live
    finally:
        handle.remove()


def test_average_decay_validates_and_keeps_the_moving_average(env_for, monkeypatch):
    env = env_for(num_edits=2)
    torch.manual_seed(0)
    agent = make_agent("hiedit", env, meta_lr=1e-2, validation_edits=4, validate_every=2, average_decay=0.5)
    params = [p for m in agent.trainable_modules().values() for p in m.parameters()]
    seen, scores = [], iter([0.2, 0.9, 0.5, 0.1])

    def fake_validate(env, records, seed, progress):
        seen.append(([p.detach().clone() for p in params], [e.clone() for e in expected], list(live)))
        return {"ES": 0.0, "GS": 0.0, "LS": 0.0, "mean": next(scores), "ES_first_20pct": 0.0}

    monkeypatch.setattr(agent, "validate", fake_validate)
    with tracking_average(params, 0.5) as (expected, live):
        agent.learn(env, steps=8, progress=False)
    assert len(seen) == 4
    for validated, average, raw in seen:
        assert all(torch.allclose(v, a, atol=1e-6) for v, a in zip(validated, average))
        assert not all(torch.equal(v, r) for v, r in zip(validated, raw))  # the average, not the raw weights
    assert all(torch.equal(p, v) for p, v in zip(params, seen[1][0]))  # the best-validated average is kept


def test_average_decay_without_validation_keeps_the_last_average(env_for):
    env = env_for(num_edits=2)
    torch.manual_seed(0)
    agent = make_agent("rledit", env, meta_lr=1e-2, validation_edits=0, average_decay=0.5)
    params = list(agent.editor.parameters())
    with tracking_average(params, 0.5) as (expected, last):
        agent.learn(env, steps=6, progress=False)
    assert all(torch.allclose(p, e, atol=1e-6) for p, e in zip(params, expected))
    assert not all(torch.equal(p, w) for p, w in zip(params, last))


def test_swapped_parameters_come_back_even_after_an_error():
    param = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(RuntimeError):
        with swapped([param], [torch.zeros(3)]):
            assert torch.equal(param, torch.zeros(3))
            raise RuntimeError("validation failed")
    assert torch.equal(param, torch.ones(3))


@pytest.mark.parametrize("name", ["hiedit", "rledit"])
def test_a_second_edit_step_lowers_the_objective_further(name, env_for):
    env = env_for(num_edits=3, trace_covers="objective")
    torch.manual_seed(0)
    one = make_agent(name, env)
    two = make_agent(name, env, edit_steps=2)
    two.load_state_dict(one.state_dict())
    observation, info = env.reset(seed=0)
    first, second = one.act(observation, info), two.act(observation, info)
    assert np.array_equal(first["layers"], second["layers"])
    unwrapped = env.unwrapped
    with torch.no_grad():
        loss_one = float(unwrapped.objective(first["update"]).total)
        loss_two = float(unwrapped.objective(second["update"]).total)
        unchanged = float(unwrapped.objective([None] * one.num_candidates).total)
    assert loss_two < loss_one < unchanged
    for f, s_ in zip(first["update"], second["update"]):
        assert (f is None) == (s_ is None)
        if f is not None:
            assert s_[0].shape[0] == 2 * f[0].shape[0] and torch.equal(s_[0][: f[0].shape[0]], f[0])
    assert make_agent(name, env).hparams["edit_steps"] == 1
    with pytest.raises(ValueError, match="edit_steps"):
        make_agent(name, env, edit_steps=2, editor_reads="edit")


def test_validation_options_are_checked(env_for):
    env = env_for(num_edits=3)
    for kwargs, name in [
        ({"validation_edits": -1}, "validation_edits"),
        ({"validation_edits": 2.5}, "validation_edits"),
        ({"validate_every": 0}, "validate_every"),
        ({"average_decay": 1.0}, "average_decay"),
        ({"average_decay": -0.1}, "average_decay"),
        ({"edit_steps": 0}, "edit_steps"),
    ]:
        with pytest.raises(ValueError, match=name):
            make_agent("rledit", env, **kwargs)
    records = len(env.unwrapped.records)
    with pytest.raises(ValueError, match=f"validation_edits={records}.*validation_edits=0 turns it off"):
        make_agent("rledit", env, validation_edits=records).learn(env, steps=1, progress=False)


def test_learned_step_sizes_stay_under_max_lr(env_for):
    env = env_for(num_edits=5)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="max_lr"):
        make_agent("rledit", env, init_lr=0.01, max_lr=0.005)
    agent = make_agent("rledit", env, init_lr=0.002, max_lr=0.004, lr_lr=0.5, validation_edits=0)
    agent.learn(env, steps=10, seed=100, progress=False)
    lrs = agent.editor.log_lr.detach().exp()
    assert float(lrs.max()) <= 0.004 * (1 + 1e-5)
    assert float(lrs.max()) > 0.002 * (1 + 1e-3)  # a step size did grow, up to the bound


def test_training_takes_the_configured_number_of_optimizer_steps(env_for, monkeypatch, tmp_path):
    calls = []
    original = torch.optim.Adam.step

    def counting_step(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    env = env_for(num_edits=3)
    agent = make_agent("hiedit", env, update_every=2, validation_edits=0)
    before = [p.detach().clone() for p in agent.gate.parameters()]
    stats = agent.learn(env, steps=9, log_dir=tmp_path / "tb", progress=False)
    assert len(calls) == 5 == stats["optimizer_steps"] == agent.optimizer_steps  # ceil(9 / 2): the tail counts too
    assert len(stats["episodes"]) == 3  # 9 edits = 3 episodes of 3: ES per episode
    assert any(not torch.equal(b, p) for b, p in zip(before, agent.gate.parameters()))
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("name", ["hiedit", "rledit"])
def test_training_loss_covers_the_configured_window(name, env_for):
    env = env_for(num_edits=4, back_depth=1)
    with pytest.raises(ValueError, match="loss_back_depth"):
        make_agent(name, env, loss_back_depth=-1)
    for bad in (0.0, float("nan"), "0.9"):
        with pytest.raises(ValueError, match="loss_time_decay"):
            make_agent(name, env, loss_time_decay=bad)
    agent = make_agent(name, env, loss_back_depth=3, loss_time_decay=1.0)
    observation, info = env.reset(seed=0)
    for _ in range(3):  # three edits in: the loss's window reaches two edits further back than the env's
        observation, _, _, _, info = env.step(agent.act(observation, info))
    unwrapped = env.unwrapped
    updates = agent.editor(agent.read_trace(unwrapped))
    selection = agent.select(observation, unwrapped.edit_trace)
    chosen = masked(updates, selection.mask)
    windows = []
    objective = unwrapped.objective

    def spy(updates, back_depth=None, time_decay=None, paraphrases=False):
        windows.append((back_depth, time_decay, paraphrases))
        return objective(updates, back_depth, time_decay, paraphrases)

    unwrapped.objective = spy
    _, scalars = agent.training_loss(unwrapped, updates, selection)
    assert windows and set(windows) == {(3, 1.0, False)}
    assert scalars["edit_loss"] == pytest.approx(objective(chosen, back_depth=3, time_decay=1.0).edit.item(), rel=1e-5)
    # paraphrase_loss: the same window, each edit scored on its paraphrase too.
    windows.clear()
    agent.hparams["paraphrase_loss"] = True
    _, scalars = agent.training_loss(unwrapped, updates, selection)
    del unwrapped.objective
    assert windows and set(windows) == {(3, 1.0, True)}
    assert scalars["edit_loss"] == pytest.approx(
        objective(chosen, back_depth=3, time_decay=1.0, paraphrases=True).edit.item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="paraphrase_loss"):
        make_agent(name, env, paraphrase_loss="yes")


def test_gate_gets_gradient_from_edit_and_locality_through_the_mask(env_for):
    env = env_for()
    observation, _ = env.reset(seed=0)
    agent: HiEditAgent = make_agent("hiedit", env)
    trace = env.unwrapped.edit_trace
    updates = agent.editor(trace)
    selection = agent.select(observation, trace)
    assert torch.equal(selection.mask.detach(), selection.hard)  # the forward value is the hard top-k
    terms = env.unwrapped.objective(masked(updates, selection.mask))
    params = list(agent.gate.parameters())
    for term in (terms.edit, terms.locality):
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the gate"
    # Without the straight-through path (hard mask only) the gate would get nothing.
    hard_terms = env.unwrapped.objective(masked(updates, selection.hard))
    assert all(g is None for g in torch.autograd.grad(hard_terms.edit, params, allow_unused=True))


def test_plackett_luce_log_probabilities_of_all_draws_sum_to_one():
    scores = torch.tensor([0.3, -1.2, 2.0, 0.0, 0.7])
    draws = list(itertools.permutations(range(5), 3))
    total = sum(float(plackett_luce_log_prob(scores, torch.tensor(d)).exp()) for d in draws)
    assert total == pytest.approx(1.0, abs=1e-5)
    p = scores.softmax(0)
    by_hand = p[2] * p[0] / (1 - p[2]) * p[4] / (1 - p[2] - p[0])
    assert float(plackett_luce_log_prob(scores, torch.tensor([2, 0, 4])).exp()) == pytest.approx(
        float(by_hand), rel=1e-5
    )


def test_exploring_gate_draws_k_seeded_and_its_score_function_term_reaches_the_gate(env_for):
    env = env_for()
    observation, _ = env.reset(seed=0)
    trace = env.unwrapped.edit_trace
    with pytest.raises(ValueError, match="gate_reinforce"):
        make_agent("hiedit", env, gate_reinforce=-1.0)
    greedy = make_agent("hiedit", env, k=2, gate_reinforce=0.0)
    assert greedy.select(observation, trace, torch.Generator().manual_seed(0)).log_prob is None  # switched off
    agent: HiEditAgent = make_agent("hiedit", env, k=2, gate_reinforce=1.0)
    draws = [agent.select(observation, trace, torch.Generator().manual_seed(s)) for s in (0, 0, 1, 2, 3, 4)]
    assert all(float(d.hard.sum()) == 2 for d in draws)
    assert torch.equal(draws[0].hard, draws[1].hard)  # the same seed draws the same modules
    assert len({tuple(d.hard.tolist()) for d in draws}) > 1  # an untrained gate explores
    acting = [agent.select(observation, trace) for _ in range(2)]  # no generator: the deterministic top-k
    assert acting[0].log_prob is None and torch.equal(acting[0].hard, acting[1].hard)
    # The first loss only sets the reward baseline; the second, with another reward, carries the term.
    updates = agent.editor(trace)
    agent.training_loss(env.unwrapped, updates, draws[0])
    choice = next(d for d in draws[2:] if not torch.equal(d.hard, draws[0].hard))
    loss, scalars = agent.training_loss(env.unwrapped, updates, choice._replace(mask=choice.hard))
    assert scalars["advantage"] != 0
    grads = torch.autograd.grad(loss, list(agent.gate.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "the score-function term did not reach the gate"


def test_exploring_training_is_reproducible(env_for):
    env = env_for(num_edits=3)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        agent = make_agent("hiedit", env, k=2, gate_reinforce=1.0, validation_edits=0)
        agent.learn(env, steps=6, seed=7, progress=False)
        states.append([p.detach().clone() for p in agent.gate.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*states))


def editor_with_statistics(env: gym.Env, update_size: str, preconditioner: str = "none"):
    """An untrained RLEdit agent whose editor has observed the traces of two unedited edits, and those
    traces; unpreconditioned unless asked, so that each update size's own rule is what is tested."""
    agent = make_agent("rledit", env, update_size=update_size, preconditioner=preconditioner)
    env.reset(seed=0)
    traces = []
    for _ in range(2):
        traces.append(env.unwrapped.edit_trace)
        agent.editor.observe(traces[-1])
        env.step({"layers": np.zeros(4, np.float32), "update": [None] * 4})
    return agent, traces


@pytest.mark.parametrize("update_size", ["learned", "gradient_norm", "gradient_effect"])
def test_untrained_update_size_follows_the_gradient(update_size, env_for):
    """Untrained, every update's relative size is ``init_lr`` times the edit's own gradient norm over
    the mean seen so far; ``gradient_norm``: still so once the network's up-projections are no longer
    zero; ``gradient_effect``: once trained, the same change of the outputs on the trace's tokens."""
    env = env_for(num_edits=2)
    agent, traces = editor_with_statistics(env, update_size)
    base = torch.tensor(env.unwrapped.base_weight_norms())

    def relative_sizes(trace):
        return torch.stack([update_sq_norm(u).sqrt() for u in agent.editor(trace)]) / base

    def output_changes(trace):
        return torch.stack([output_change(u, v, k) for (u, v), k in zip(agent.editor(trace), trace.keys)])

    with torch.no_grad():
        untrained = [relative_sizes(trace) for trace in traces]
        untrained_changes = output_changes(traces[0])
        for trace, sizes in zip(traces, untrained):
            mean = (gradient_norms(traces[0]) + gradient_norms(traces[1])) / 2
            expected = agent.hparams["init_lr"] * gradient_norms(trace) / mean
            torch.testing.assert_close(sizes, expected, rtol=1e-3, atol=0)
        for editor in agent.editor.editors:  # as if trained: the network now reshapes the update
            for block in editor.blocks:
                block.up.weight.normal_(0, 0.5)
        trained = relative_sizes(traces[0])
        trained_changes = output_changes(traces[0])
    if update_size == "gradient_norm":
        torch.testing.assert_close(trained, untrained[0], rtol=1e-3, atol=0)
    else:
        assert not torch.allclose(trained, untrained[0], rtol=1e-2)
    if update_size == "gradient_effect":
        torch.testing.assert_close(trained_changes, untrained_changes, rtol=1e-3, atol=0)
    else:
        assert not torch.allclose(trained_changes, untrained_changes, rtol=1e-2)


@pytest.mark.parametrize("preconditioner", ["diagonal", "full"])
def test_preconditioned_keys_are_divided_by_their_second_moment(preconditioner, env_for):
    """With damping d, an untrained editor's pseudo keys are the trace's keys times the inverse
    of the keys' second-moment matrix ``C`` over every token observed, damped by ``d * mean_j C_jj``:
    per feature (``C``'s diagonal) or, as ROME and MEMIT precondition, the whole matrix; the output
    side and, under ``update_size="gradient_norm"``, the update's size are the unpreconditioned editor's."""
    env = env_for(num_edits=2)
    plain, traces = editor_with_statistics(env, "gradient_norm")
    agent, _ = editor_with_statistics(env, "gradient_norm", preconditioner=preconditioner)
    with torch.no_grad():
        preconditioned, reference = agent.editor(traces[1]), plain.editor(traces[1])
    for i, ((u, v), (u0, v0)) in enumerate(zip(preconditioned, reference)):
        seen = torch.cat([t.keys[i] for t in traces]).double()
        moment = seen.T @ seen / seen.shape[0]
        if preconditioner == "diagonal":
            moment = moment.diagonal().diag()
        damped = moment + 0.1 * moment.diagonal().mean() * torch.eye(moment.shape[0], dtype=moment.dtype)
        expected = traces[1].keys[i].double() @ torch.linalg.inv(damped)
        torch.testing.assert_close(v.double(), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
        torch.testing.assert_close(update_sq_norm((u, v)), update_sq_norm((u0, v0)), rtol=1e-3, atol=0)
        assert not torch.allclose(v, v0, rtol=1e-2)
        torch.testing.assert_close(u / u.norm(), u0 / u0.norm(), rtol=1e-4, atol=1e-6)  # rescaled only
    for bad in (0, -0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="preconditioner_damping must be"):
            make_agent("rledit", env, preconditioner_damping=bad)
    with pytest.raises(ValueError, match="preconditioner must be one of"):
        make_agent("rledit", env, preconditioner="diag")
    # "learned" sizes the update from its factors, so the preconditioner would resize it
    with pytest.raises(
        ValueError, match="use update_size='gradient_norm' or 'gradient_effect', or preconditioner='none'"
    ):
        make_agent("rledit", env, update_size="learned")
    make_agent("rledit", env, update_size="learned", preconditioner="none")


@pytest.mark.parametrize("update_size", ["learned", "gradient_norm", "gradient_effect"])
def test_the_editor_on_some_modules_gives_their_updates_of_all(update_size, env_for):
    """Acting, HiEdit runs its editor on the modules its gate chose only: each update depends on its
    own module's trace, so those updates are the ones the editor on every candidate gives."""
    modules = [
        "model.layers.2.mlp.up_proj",
        "model.layers.0.self_attn.q_proj",
        "model.layers.3.mlp.up_proj",
        "model.layers.1.mlp.down_proj",
    ]  # two shapes, members of one split between the subsets
    env = env_for(num_edits=3, modules=modules)
    agent, traces = editor_with_statistics(env, update_size)
    with torch.no_grad():
        for editor in agent.editor.editors:  # as if trained
            for block in editor.blocks:
                block.up.weight.normal_(0, 0.5)
        every = agent.editor(traces[1])
        for subset in ([0, 2], [1], [3, 0]):
            some = agent.editor(traces[1], subset)
            for i, update in enumerate(some):
                if i not in subset:
                    assert update is None
                    continue
                torch.testing.assert_close(update[0], every[i][0])
                torch.testing.assert_close(update[1], every[i][1])


@pytest.mark.parametrize("update_size", ["learned", "gradient_norm", "gradient_effect"])
def test_max_size_ratio_shrinks_only_the_updates_above_the_bound(update_size, env_for):
    """A module whose ``||G||`` is more than ``max_size_ratio`` times its running mean gets its update
    scaled by ``max_size_ratio * mean / ||G||``; the others keep theirs."""
    env = env_for(num_edits=2)
    agent, traces = editor_with_statistics(env, update_size)
    for editor in agent.editor.editors:  # a trained-looking network, so the bound is not just the untrained size
        for block in editor.blocks:
            torch.nn.init.normal_(block.up.weight, 0, 0.5)
    trace = traces[0]
    ratios = gradient_norms(trace) / agent.editor.gradient_size.mean.float()
    bound = float(ratios.median())
    assert (ratios > bound).any() and (ratios <= bound).any()
    with torch.no_grad():
        free = [u for u, _ in agent.editor(trace)]
        agent.editor.max_size_ratio = bound
        bounded = [u for u, _ in agent.editor(trace)]
    for i, (a, b) in enumerate(zip(free, bounded)):
        torch.testing.assert_close(b, a * min(1.0, bound / float(ratios[i])), rtol=1e-4, atol=0)
    if update_size == "gradient_norm":  # relative size init_lr * min(ratio, bound)
        base = torch.tensor(env.unwrapped.base_weight_norms())
        sizes = torch.stack([update_sq_norm(u).sqrt() for u in agent.editor(trace)]).detach() / base
        expected = agent.hparams["init_lr"] * ratios.clamp(max=bound)
        torch.testing.assert_close(sizes, expected, rtol=1e-3, atol=0)


def test_max_size_ratio_is_checked_and_can_be_set_on_a_checkpoint(env_for, tmp_path):
    env = env_for(num_edits=2)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "3"):
        with pytest.raises(ValueError, match="max_size_ratio must be"):
            make_agent("rledit", env, max_size_ratio=bad)
    agent = make_agent("hiedit", env, validation_edits=0)
    agent.learn(env, steps=2, progress=False)
    agent.save(tmp_path)
    loaded = agent_class("hiedit").load(tmp_path, env, max_size_ratio=2)
    assert loaded.editor.max_size_ratio == 2.0 and loaded.config() == {**agent.config(), "max_size_ratio": 2}
    assert torch.equal(loaded.editor.log_lr, agent.editor.log_lr)
    with pytest.raises(
        ValueError, match=r"fixes \['rank'\]; only its acting options \['max_size_ratio', 'edit_steps'\]"
    ):
        agent_class("hiedit").load(tmp_path, env, rank=4)
    assert agent_class("hiedit").load(tmp_path, env, edit_steps=2).hparams["edit_steps"] == 2
    # The same through load_for_acting, which also builds the environment the checkpoint acts in.
    acting, acting_env = load_for_acting(
        agent_class("hiedit"),
        tmp_path,
        {"max_size_ratio": 2},
        model=MODEL,
        dataset="default",
        num_edits=2,
        evaluate_generation=False,
    )
    assert acting.editor.max_size_ratio == 2.0 and acting_env.unwrapped.trace_covers == "objective"
    acting_env.close()


def test_key_moment_pools_every_row_and_refreshes_its_inverse_as_it_grows():
    """The running ``E[k k^T]`` is the pooled mean over every row folded in, and a solve uses the
    current moment once it has grown by ``REFRESH_GROWTH``, and after loading other statistics."""
    torch.manual_seed(0)
    rows = [torch.randn(n, 6) for n in (3, 5, 4)]
    moment, copy = KeyMoment(6), KeyMoment(6)
    x = torch.randn(2, 6)

    def expected(seen: list[torch.Tensor]) -> torch.Tensor:
        pooled = torch.cat(seen).double()
        c = pooled.T @ pooled / pooled.shape[0]
        return x.double() @ torch.linalg.inv(c + 0.1 * c.diagonal().mean() * torch.eye(6, dtype=torch.float64))

    for i, r in enumerate(rows):
        moment.update(r)
        torch.testing.assert_close(moment.solve(x, 0.1, r).double(), expected(rows[: i + 1]), rtol=1e-4, atol=1e-6)
    copy.update(rows[0])
    copy.solve(x, 0.1, rows[0])  # caches the inverse of the first rows' moment
    copy.load_state_dict(moment.state_dict())
    torch.testing.assert_close(copy.solve(x, 0.1, rows[0]).double(), expected(rows), rtol=1e-4, atol=1e-6)
    own = KeyMoment(6).solve(x, 0.1, rows[1])  # no statistics yet: the rows it is given
    torch.testing.assert_close(own.double(), expected(rows[1:2]), rtol=1e-4, atol=1e-6)
    many = [torch.randn(40, 6), torch.randn(1, 6) * 10]
    moment = KeyMoment(6)
    moment.update(many[0])
    moment.solve(x, 0.1, many[0])
    moment.update(many[1])  # 41 rows: too few more to invert again, the 40's inverse serves
    torch.testing.assert_close(moment.solve(x, 0.1, many[1]).double(), expected(many[:1]), rtol=1e-4, atol=1e-6)
    moment.update(torch.zeros(19, 6))  # 60 rows: inverted again
    torch.testing.assert_close(
        moment.solve(x, 0.1, many[1]).double(), expected([*many, torch.zeros(19, 6)]), rtol=1e-4, atol=1e-6
    )
    assert 41 <= 40 * REFRESH_GROWTH < 60


@pytest.mark.parametrize("k", [1, 3])
def test_topk_keeps_exactly_k(k, env_for):
    env = env_for(num_edits=3)
    agent = make_agent("hiedit", env, k=k)
    observation, info = env.reset(seed=1)
    terminated = False
    while not terminated:
        action = agent.act(observation, info)
        assert action["layers"].sum() == k
        assert sum(u is not None for u in action["update"]) == k
        observation, _, terminated, _, info = env.step(action)
        assert info["num_layers_chosen"] == k
    assert make_agent("topk_grad", env_for("step_size"), k=k).k == k
    with pytest.raises(ValueError, match="k must be an integer"):
        make_agent("hiedit", env, k=5)


@pytest.mark.parametrize(
    "name, extra", [("hiedit", {}), ("rledit", {}), ("rledit", {"preconditioner": "diagonal"}), ("random_k", {})]
)
def test_checkpoint_round_trip_gives_the_same_actions(name, extra, env_for, tmp_path):
    env = env_for(agent_class(name).update_mode, num_edits=3)
    kwargs = {"update_every": 1, "validation_edits": 0, **extra} if name != "random_k" else {"k": 3, "seed": 7}
    agent = make_agent(name, env, **kwargs)
    agent.learn(env, steps=3, progress=False)
    agent.save(tmp_path)
    loaded = type(agent).load(tmp_path, env)
    assert loaded.config() == agent.config()
    if name != "random_k":
        norms = [(a.mean.clone(), b.mean.clone()) for a, b in zip(agent.editor.key_norms, loaded.editor.key_norms)]
        assert all(torch.equal(a, b) for a, b in norms) and float(agent.editor.key_norms[0].count) > 0
        assert loaded.optimizer_steps == agent.optimizer_steps == 3
    if name == "rledit":  # the full preconditioner's statistics travel; the diagonal's checkpoint has none
        assert (loaded.editor.key_moments is None) == (extra.get("preconditioner") == "diagonal")
        assert extra or all(
            torch.equal(a.moment, b.moment) and a.count == b.count > 0
            for a, b in zip(agent.editor.key_moments, loaded.editor.key_moments)
        )
    observation, info = env.reset(seed=5)
    if name == "random_k":
        agent.rng = np.random.default_rng(7)
    first, second = agent.act(observation, info), loaded.act(observation, info)
    np.testing.assert_array_equal(first["layers"], second["layers"])
    for a, b in zip(first["update"], second["update"]):
        if isinstance(a, tuple):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_checkpoint_without_a_manifest_is_refused(env_for, tmp_path):
    """Checkpoints of the format before manifests (and saves cut short) hold no manifest.json."""
    env = env_for(num_edits=3)
    make_agent("rledit", env).save(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: it has no manifest\.json"):
        agent_class("rledit").load(tmp_path, env)


def test_constant_step_is_tuned_on_the_given_environment(env_for):
    agent = make_agent("all", env_for("step_size", num_edits=2))
    stats = agent.learn(agent.env, steps=10, progress=False)
    assert agent.step in (-1.0, -0.5, 0.0, 0.5, 1.0) and agent.step == stats["step"]
    assert stats["grid_scores"][str(agent.step)] == max(stats["grid_scores"].values())


@pytest.mark.parametrize("loss", ["edit", "objective"])
def test_ft_l_descends_the_loss_it_is_given(loss, env_for):
    """The papers' FT-L loss ignores the locality term; the objective's does not."""
    updates = []
    for kl_weight in (1.0, 50.0):
        env = env_for(kl_weight=kl_weight, num_edits=2)
        observation, info = env.reset(seed=0)
        action = make_agent("ft_l", env, loss=loss).act(observation, info)
        updates.append([u for u in action["update"] if u is not None])
    pairs = list(zip(*updates))
    assert pairs and all(a.abs().sum() > 0 for a, _ in pairs)
    same = all(torch.equal(a, b) for a, b in pairs)
    assert same == (loss == "edit")
    with pytest.raises(ValueError, match="loss must be 'objective' or 'edit'"):
        make_agent("ft_l", env, loss="kl")


def test_cli_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--model", MODEL, "--dataset", "default", "--seed", "1", "--threads", "1"]
    # 10 held-out validation edits: the default 50 and 2 edits per episode are more than the shipped set's 48 training records.
    assert (
        main(
            [
                "train",
                "--agent",
                "hiedit",
                *common,
                "--steps",
                "4",
                "--num-edits",
                "2",
                "--agent-kwargs",
                '{"validation_edits": 10}',
                "--out",
                str(out),
            ]
        )
        == 0
    )
    stats = json.loads((out / "train_stats.json").read_text())
    assert stats["optimizer_steps"] == 4 and stats["seconds_per_step"] > 0 and stats["peak_rss_mb"] > 0
    assert [v["after_edits"] for v in stats["validations"]] == [
        2,
        4,
    ]  # by default: after the first episode and the last edit
    assert (out / "agent.json").is_file() and (out / "agent_state.pt").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    results = tmp_path / "not" / "yet" / "results.json"  # evaluate makes the folder before it runs
    assert (
        main(
            [
                "evaluate",
                "--agent",
                "hiedit",
                "--checkpoint",
                str(out),
                *common,
                "--num-edits",
                "3",
                "--out",
                str(results),
            ]
        )
        == 0
    )
    written = json.loads(results.read_text())
    assert (written["agent"], written["num_edits"], written["seed"]) == ("hiedit", 3, 1)
    assert written["layers_per_edit"] == 2
    # --agent-kwargs on a checkpoint: its acting options only.
    assert (
        main(
            [
                "evaluate",
                "--agent",
                "hiedit",
                "--checkpoint",
                str(out),
                *common,
                "--num-edits",
                "3",
                "--agent-kwargs",
                '{"max_size_ratio": 2}',
                "--out",
                str(results),
            ]
        )
        == 0
    )
    assert json.loads(results.read_text())["agent_kwargs"] == {"max_size_ratio": 2}
    assert (
        main(
            [
                "evaluate",
                "--agent",
                "hiedit",
                "--checkpoint",
                str(out),
                *common,
                "--num-edits",
                "3",
                "--agent-kwargs",
                '{"rank": 4}',
                "--out",
                str(results),
            ]
        )
        == 2
    )
    # A checkpoint of another agent, or none for an agent that needs one: one clear line, exit code 2.
    assert (
        main(
            [
                "evaluate",
                "--agent",
                "rledit",
                "--checkpoint",
                str(out),
                *common,
                "--num-edits",
                "3",
                "--out",
                str(results),
            ]
        )
        == 2
    )
    assert main(["evaluate", "--agent", "rledit", *common, "--num-edits", "3", "--out", str(results)]) == 2
    err = capsys.readouterr().err
    assert "holds a hiedit_agents.learned.hiedit:HiEditAgent agent, not 'rledit'" in err
    assert "must be trained first" in err
    assert "fixes ['rank']" in err


def test_evaluate_tunes_a_heuristic_as_train_does_unless_its_step_is_given(tmp_path, capsys):
    """One path, one value per baseline: `hiedit evaluate --agent all` tunes the step with `hiedit train`'s
    code on the training split, so it picks the step `hiedit train` picks with the same seed and data."""
    data = ["--model", MODEL, "--dataset", "default", "--threads", "1"]
    checkpoint, results = tmp_path / "all", tmp_path / "results.json"
    assert main(["train", "--agent", "all", *data, "--steps", "20", "--seed", "3", "--out", str(checkpoint)]) == 0
    trained = json.loads((checkpoint / "train_stats.json").read_text())
    evaluate = ["evaluate", "--agent", "all", *data, "--num-edits", "3", "--seed", "1", "--out", str(results)]
    assert main([*evaluate, "--train-steps", "20", "--train-seed", "3"]) == 0
    tuned = json.loads(results.read_text())
    assert tuned["tuning"]["tuned"] is True and tuned["tuning"]["chosen"] == {"step": trained["step"]}
    assert tuned["tuning"]["grid_scores"] == trained["grid_scores"] and tuned["config"]["step"] == trained["step"]
    # at least one 20-edit episode per value of the grid's five: 100 edits
    assert (tuned["tuning"]["seed"], tuned["tuning"]["steps"]) == (3, 100)
    assert tuned["tuning"]["environment"]["split"] == "train" and tuned["tuning"]["environment"]["num_edits"] == 20
    assert tuned["split"] == "test"  # evaluated on the disjoint split
    assert f"tuned step = {trained['step']} on 100 edits" in capsys.readouterr().out
    # the checkpoint `hiedit train` wrote evaluates to the same numbers, and is not tuned again
    assert main([*evaluate, "--checkpoint", str(checkpoint)]) == 0
    loaded = json.loads(results.read_text())
    assert loaded["tuning"]["tuned"] is False and "--checkpoint" in loaded["tuning"]["reason"]
    assert (loaded["ES"], loaded["GS"], loaded["LS"]) == (tuned["ES"], tuned["GS"], tuned["LS"])
    # a step given in --agent-kwargs is kept as it is
    assert main([*evaluate, "--agent-kwargs", '{"step": 0.5}']) == 0
    fixed = json.loads(results.read_text())
    assert fixed["tuning"] == {"tuned": False, "reason": "--agent-kwargs gives step"} and fixed["config"]["step"] == 0.5
    assert "tuned step" not in capsys.readouterr().out


def test_evaluate_tunes_on_another_file_when_given_one(zsre_format_path, tmp_path):
    results = tmp_path / "results.json"
    assert (
        main(
            [
                "evaluate",
                "--agent",
                "topk_grad",
                "--model",
                MODEL,
                "--dataset",
                "default",
                "--num-edits",
                "2",
                "--threads",
                "1",
                "--train-dataset",
                zsre_format_path,
                "--train-split",
                "all",
                "--train-steps",
                "5",
                "--out",
                str(results),
            ]
        )
        == 0
    )
    tuning = json.loads(results.read_text())["tuning"]
    assert (tuning["environment"]["dataset"], tuning["environment"]["split"]) == (zsre_format_path, "all")
    assert tuning["chosen"]["step"] in (-1.0, -0.5, 0.0, 0.5, 1.0)


def test_low_memory_training_runs_in_its_own_process(tmp_path):
    # A subprocess: the allocator setting would otherwise slow every later test of this process.
    out = tmp_path / "run"
    code = (
        "import sys; from hiedit_agents.cli import main; "
        "from hiedit_agents.common.memory import return_freed_memory; "
        "assert return_freed_memory(); sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "train",
            "--agent",
            "rledit",
            "--model",
            MODEL,
            "--dataset",
            "default",
            "--steps",
            "2",
            "--num-edits",
            "2",
            "--threads",
            "1",
            "--low-memory",
            "--agent-kwargs",
            '{"validation_edits": 0}',
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "train_stats.json").read_text())["low_memory"] is True


def test_user_agent_as_module_path_runs_in_evaluate(tmp_path, monkeypatch):
    (tmp_path / "my_user_agents.py").write_text(
        textwrap.dedent("""
        import numpy as np
        from hiedit_agents import Agent

        class FirstLayer(Agent):
            name = "first_layer"

            def act(self, observation, info):
                layers = np.zeros(self.num_candidates, np.float32)
                layers[0] = 1.0
                return {"layers": layers, "update": np.zeros(self.num_candidates, np.float32)}
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    results = tmp_path / "results.json"
    assert (
        main(
            [
                "evaluate",
                "--agent",
                "my_user_agents:FirstLayer",
                "--model",
                MODEL,
                "--dataset",
                "default",
                "--num-edits",
                "3",
                "--seed",
                "2",
                "--threads",
                "1",
                "--out",
                str(results),
            ]
        )
        == 0
    )
    written = json.loads(results.read_text())
    assert written["agent"] == "my_user_agents:FirstLayer"
    assert written["layers_per_edit"] == 1 and written["num_edits"] == 3
    assert hiedit_agents.Agent in agent_class("my_user_agents:FirstLayer").__mro__


def test_untrained_editor_observes_training_edits_then_evaluates(tmp_path):
    out = tmp_path / "untrained.json"
    assert (
        main(
            [
                "evaluate",
                "--agent",
                "untrained_editor",
                "--model",
                MODEL,
                "--dataset",
                "default",
                "--num-edits",
                "3",
                "--agent-kwargs",
                '{"observe_edits": 25, "init_lr": 0.01}',
                "--env-kwargs",
                '{"back_depth": 0}',
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["num_edits"] == 3 and result["agent_kwargs"] == {"observe_edits": 25, "init_lr": 0.01}
    assert result["layers_per_edit"] == 4.0 and 0.0 <= result["mean"] <= 1.0


def test_untrained_editor_observes_the_training_split_or_the_given_data(zsre_format_path):
    env = gym.make(
        "HiEdit-v0",
        model=MODEL,
        dataset="default",
        num_edits=3,
        evaluate_generation=False,
        **agent_class("untrained_editor").acting_requirements({}),
    )
    env.reset(seed=0)  # the model is shared between environments: this one's weights are in it after a reset
    before = [p.detach().clone() for p in env.unwrapped.model.parameters()]
    agent = make_agent("untrained_editor", env, observe_edits=25)  # one training episode of 20 and 5 of the next
    assert int(agent.editor.gradient_size.count) == 25 and not agent.requires_training
    assert all(torch.equal(a, b) for a, b in zip(before, env.unwrapped.model.parameters()))
    other = make_agent("untrained_editor", env, observe_edits=3, observe_dataset=zsre_format_path)
    assert int(other.editor.gradient_size.count) == 3 and other.config()["observe_dataset"] == zsre_format_path
    assert int(make_agent("untrained_editor", env, observe_edits=0).editor.gradient_size.count) == 0
    with pytest.raises(ValueError, match="observe_edits must be an integer >= 0"):
        make_agent("untrained_editor", env, observe_edits=-1)


def test_resuming_verifies_the_progress_folder_once(env_for, tmp_path, monkeypatch):
    from hiedit_agents.common import base
    from hiedit_agents.common.checkpoint import progress_folder
    from hiedit_agents.learned import agent as learned

    env = env_for()
    make_agent("rledit", env, validation_edits=0).learn(
        env, steps=8, seed=3, progress=False, checkpoint_dir=tmp_path, checkpoint_every=4
    )
    folder = progress_folder(tmp_path)  # learn() leaves its last progress; hiedit train removes it
    verified: list[Path] = []
    for module in (base, learned):
        real = module.verify_checkpoint
        monkeypatch.setattr(
            module,
            "verify_checkpoint",
            lambda directory, real=real: verified.append(Path(directory)) or real(directory),
        )
    resumed = agent_class("rledit").load(folder, env)
    stats = resumed.learn(env, steps=12, seed=3, progress=False, checkpoint_dir=tmp_path, resume=True)
    # the progress saved after edit 4 (the first run ended at 8 without a checkpoint), trained on to 12
    assert verified == [folder] and stats["steps_this_run"] == 8
