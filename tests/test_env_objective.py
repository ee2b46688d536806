"""The differentiable objective: gradients reach the updates, the model is never written, and the
terms mean what they say (KL 0 without an update, back_depth reaches earlier edits, and the
hooked update equals the applied one)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from hiedit_env import ObjectiveTerms
from hiedit_env import env as env_module
from hiedit_env.score import score_pairs
from hiedit_env.tokens import encode_record


def _zeros(env, requires_grad=True):
    return [torch.zeros(d_out, d_in, requires_grad=requires_grad) for d_in, d_out in env.module_dims()]


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_gradients_flow_to_dense_updates(make_env, helpers, model):
    env = make_env(model).unwrapped
    env.reset(seed=0)
    before = helpers.snapshot(env)
    updates = _zeros(env)
    terms = env.objective(updates)
    assert isinstance(terms, ObjectiveTerms)
    assert terms.total.ndim == 0 and terms.total.requires_grad
    terms.total.backward()
    for u in updates:
        assert u.grad is not None and u.grad.abs().sum() > 0
    assert helpers.same_weights(before, helpers.snapshot(env))
    for p in env.model.parameters():
        assert not p.requires_grad and p.grad is None


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_gradients_flow_to_low_rank_factors(make_env, helpers, model):
    env = make_env(model, l2_weight=0.1).unwrapped
    env.reset(seed=0)
    before = helpers.snapshot(env)
    gen = torch.Generator().manual_seed(0)
    factors = [
        (0.01 * torch.randn(3, d_out, generator=gen), 0.01 * torch.randn(3, d_in, generator=gen))
        for d_in, d_out in env.module_dims()
    ]
    for u, v in factors:
        u.requires_grad_(True)
        v.requires_grad_(True)
    terms = env.objective(factors)
    expected_l2 = sum(float((u.T @ v).detach().pow(2).sum()) for u, v in factors)
    assert terms.l2.item() == pytest.approx(expected_l2, rel=1e-4)
    terms.total.backward()
    for u, v in factors:
        assert u.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    assert helpers.same_weights(before, helpers.snapshot(env))


def test_none_entries_are_allowed(make_env):
    env = make_env("test-tiny-llama").unwrapped
    env.reset(seed=0)
    d_in, d_out = env.module_dims()[1]
    dense = torch.zeros(d_out, d_in, requires_grad=True)
    terms = env.objective([None, dense, None, None])
    terms.total.backward()
    assert dense.grad.abs().sum() > 0
    assert terms.l2.item() == 0.0
    # All None: the objective is the unedited model's loss, with nothing to differentiate.
    plain = env.objective([None] * 4, back_depth=0)
    assert plain.edit.item() == pytest.approx(env.edit_trace.loss, rel=1e-4)


@pytest.mark.parametrize("count", [0, 3, 5])
def test_wrong_number_of_updates_is_an_error(make_env, count):
    env = make_env("test-tiny-gpt2").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="4 updates"):
        env.objective([None] * count)


def test_objective_needs_a_current_edit(make_env, helpers):
    env = make_env("test-tiny-gpt2", num_edits=2).unwrapped
    with pytest.raises(gym.error.ResetNeeded):
        env.objective([None] * 4)
    env.reset(seed=0)
    env.step(helpers.full_action(env))
    env.step(helpers.full_action(env))
    with pytest.raises(gym.error.ResetNeeded):
        env.objective([None] * 4)


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_kl_is_zero_without_an_update(make_env, model):
    env = make_env(model).unwrapped
    env.reset(seed=0)
    for updates in ([None] * 4, _zeros(env)):
        terms = env.objective(updates)
        assert abs(terms.locality.item()) < 1e-5
    gen = torch.Generator().manual_seed(0)
    big = [0.5 * torch.randn(d_out, d_in, generator=gen) for d_in, d_out in env.module_dims()]
    assert env.objective(big).locality.item() > 1e-3


def test_unedited_references_are_scored_in_chunks_and_dropped_behind_the_window(make_env, helpers, monkeypatch):
    monkeypatch.setattr(env_module, "REFERENCE_CHUNK", 3)
    env = make_env("test-tiny-llama", num_edits=7, trace_covers="objective", locality_depth=1).unwrapped
    passes = []
    real = env_module.score_pairs
    monkeypatch.setattr(
        env_module,
        "score_pairs",
        lambda model, pairs, *a, **k: (
            passes.append((len(pairs), k.get("keep_log_probs", False))) or real(model, pairs, *a, **k)
        ),
    )
    env.reset(seed=0)
    fresh = real(env.model, [e.loc for e in env._episode], env._pad_id, keep_log_probs=True).log_probs
    held = []
    for _ in range(6):
        env.step(helpers.full_action(env, 1.0, 0.5))
        held.append(sorted(env._loc_log_probs))
    unedited = [n for n, keep in passes if keep]
    assert unedited == [3, 3, 1]  # edits 0-2, 3-5 and 6, each chunk in one pass of the unedited weights
    assert held[-1] == [5, 6] and all(len(h) <= 1 + 3 for h in held)  # the window (t, t-1) and the chunk ahead
    edits, locs, references = env._objective_window(None)
    for t, reference in zip([6, 5], references):  # still the unedited model's after six edits
        assert torch.allclose(reference, fresh[t], atol=1e-5)


def test_back_depth_covers_previous_edits_and_paraphrases_join_them(make_env, helpers):
    env = make_env("test-tiny-gpt2", num_edits=5).unwrapped
    env.reset(seed=0)
    for _ in range(3):
        env.step(helpers.full_action(env, 1.0, 0.0))
    updates = [None] * 4
    shallow = env.objective(updates, back_depth=0)
    deep = env.objective(updates, back_depth=2)
    assert shallow.edit.item() == pytest.approx(env.edit_trace.loss, rel=1e-4)
    assert deep.edit.item() != pytest.approx(shallow.edit.item(), rel=1e-4)
    # The weighted mean of the current and the two previous edits' losses, weights decay**j.
    pad = env.tokenizer.pad_token_id
    encoded = [encode_record(env.tokenizer, r) for r in env.episode_records()]

    def window_mean(losses):
        return sum(env.time_decay**j * loss for j, loss in enumerate(losses)) / sum(env.time_decay**j for j in range(3))

    def nll(pair):
        return float(score_pairs(env.model, [pair], pad).nll[0])

    prompts = [nll(encoded[3 - j].edit) for j in range(3)]
    assert deep.edit.item() == pytest.approx(window_mean(prompts), rel=1e-4)
    # Deeper than the episode so far just stops at edit 0.
    assert env.objective(updates, back_depth=10).edit.item() == pytest.approx(
        env.objective(updates, back_depth=3).edit.item(), rel=1e-6
    )
    # With paraphrases each edit's loss is the mean over its prompt and its paraphrase; the KL rows stay.
    both = [(loss + nll(encoded[3 - j].rephrase)) / 2 for j, loss in enumerate(prompts)]
    rephrased = env.objective(updates, back_depth=2, paraphrases=True)
    assert rephrased.per_edit.tolist() == pytest.approx(both, rel=1e-4)
    assert rephrased.edit.item() == pytest.approx(window_mean(both), rel=1e-4)
    # The paraphrases change the loss: each edit's term is no longer its prompt's alone.
    assert rephrased.per_edit.tolist() != pytest.approx(prompts, rel=1e-3)
    assert rephrased.locality.item() == pytest.approx(deep.locality.item(), abs=1e-7)


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_hooked_update_equals_the_applied_update(make_env, model):
    """The objective's edit loss for dW is the loss of the model after stepping with that dW."""
    env = make_env(model, update_mode="low_rank", num_edits=3).unwrapped
    env.reset(seed=0, options={"records": [5, 6]})
    gen = torch.Generator().manual_seed(3)
    dense = []
    for i, ((d_in, d_out), norm) in enumerate(zip(env.module_dims(), env.base_weight_norms())):
        # Down the gradient plus noise, at half the cap (so it is applied unclipped).
        grad = env.edit_trace.weight_gradient(i)
        direction = -grad / grad.norm() + torch.randn(d_out, d_in, generator=gen) / (d_out * d_in) ** 0.5
        dense.append(direction * (0.5 * env.max_update_ratio * norm / direction.norm()))
    predicted = env.objective(dense, back_depth=0).edit.item()
    assert predicted != pytest.approx(env.edit_trace.loss, rel=1e-3)  # the update does change the loss
    pair = encode_record(env.tokenizer, env.current_record).edit
    n = len(env.candidate_modules)
    env.step({"layers": np.ones(n, np.float32), "update": dense})
    actual = float(score_pairs(env.model, [pair], env.tokenizer.pad_token_id).nll[0])
    assert actual == pytest.approx(predicted, rel=1e-4)


def test_objective_under_no_grad_gives_the_same_value(make_env):
    env = make_env("test-tiny-llama").unwrapped
    env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    updates = [0.01 * torch.randn(d_out, d_in, generator=gen) for d_in, d_out in env.module_dims()]
    with_grad = env.objective(updates)
    with torch.no_grad():
        without = env.objective(updates)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    assert without.total.item() == pytest.approx(with_grad.total.item(), rel=1e-6)


def _kl(log_probs: torch.Tensor, reference: torch.Tensor) -> float:
    """KL(reference || edited) per answer token, the objective's convention."""
    return float((reference.exp() * (reference - log_probs)).sum(-1).mean())


def test_locality_covers_the_unrelated_prompts_of_the_window(make_env, helpers):
    env = make_env("test-tiny-gpt2", num_edits=5, locality_depth=2).unwrapped
    env.reset(seed=0)
    pad = env.tokenizer.pad_token_id
    locs = [encode_record(env.tokenizer, r).loc for r in env.episode_records()]
    reference = score_pairs(env.model, locs, pad, keep_log_probs=True).log_probs
    for _ in range(3):
        env.step(helpers.full_action(env, 1.0, 1.0))
    edited = score_pairs(env.model, locs, pad, keep_log_probs=True).log_probs
    per_prompt = [_kl(edited[t], reference[t]) for t in range(4)]
    assert min(per_prompt[:3]) > 1e-5  # the earlier edits moved the model on their own unrelated prompts
    window = per_prompt[1:]
    assert env.objective([None] * 4, back_depth=0).locality.item() == pytest.approx(sum(window) / 3, rel=1e-3)
    # Gradient reaches the updates through the locality term alone: they can undo the drift.
    updates = _zeros(env)
    env.objective(updates).locality.backward()
    assert all(u.grad is not None and u.grad.abs().sum() > 0 for u in updates)
    env.locality_depth = 0  # the default: the current edit's unrelated prompt only
    assert env.objective([None] * 4).locality.item() == pytest.approx(per_prompt[3], rel=1e-3)


def test_locality_depth_can_follow_back_depth(make_env):
    env = make_env("test-tiny-gpt2", back_depth=4, locality_depth="back_depth").unwrapped
    assert env.locality_depth == 4
    with pytest.raises(ValueError, match="locality_depth"):
        make_env("test-tiny-gpt2", locality_depth=-1)


def test_window_locality_is_zero_while_the_model_is_unedited(make_env, helpers):
    env = make_env("test-tiny-llama", num_edits=4, locality_depth=2).unwrapped
    env.reset(seed=0)
    for _ in range(2):
        env.step(helpers.full_action(env, 0.0))  # no module chosen: nothing changes
    for updates in ([None] * 4, _zeros(env)):
        assert abs(env.objective(updates).locality.item()) < 1e-5
    gen = torch.Generator().manual_seed(0)
    big = [0.5 * torch.randn(d_out, d_in, generator=gen) for d_in, d_out in env.module_dims()]
    assert env.objective(big).locality.item() > 1e-3


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_objective_trace_gives_the_objective_gradient(make_env, helpers, model):
    """Summed over its token rows, ``delta^T k`` is the objective's gradient w.r.t. a dense update, at
    zero and under an update; it has more rows than the edit's own trace, and another gradient; nothing
    is written."""
    env = make_env(model, back_depth=2, update_mode="step_size").unwrapped
    env.reset(seed=0)
    n = len(env.candidate_modules)
    env.step({"layers": np.ones(n, np.float32), "update": np.full(n, 0.5, np.float32)})  # drift, then trace edit 2
    before = helpers.snapshot(env)
    generator = torch.Generator().manual_seed(1)
    for updates in (
        [None] * n,
        [0.02 * torch.randn(d_out, d_in, generator=generator) for d_in, d_out in env.module_dims()],
    ):
        trace = env.objective_trace(updates)
        dense = [
            torch.zeros(d_out, d_in) if u is None else u.clone() for u, (d_in, d_out) in zip(updates, env.module_dims())
        ]
        for d in dense:
            d.requires_grad_(True)
        expected = torch.autograd.grad(env.objective(dense).total, dense)
        for i in range(n):
            assert trace.keys[i].shape[0] == trace.grads[i].shape[0] > env.edit_trace.keys[i].shape[0]
            torch.testing.assert_close(trace.weight_gradient(i), expected[i], rtol=1e-4, atol=1e-7)
    assert helpers.same_weights(before, helpers.snapshot(env))
    assert not torch.allclose(env.objective_trace([None] * n).weight_gradient(0), env.edit_trace.weight_gradient(0))


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_chunked_objective_gives_the_same_loss_and_gradients(make_env, model):
    """``objective_chunk``: the batch runs a few rows at a time, each recomputed in the backward pass."""
    whole = make_env(model, back_depth=3, locality_depth=1, num_edits=4, update_mode="step_size").unwrapped
    chunked = make_env(
        model, back_depth=3, locality_depth=1, num_edits=4, update_mode="step_size", objective_chunk=2
    ).unwrapped
    n = len(whole.candidate_modules)
    for env in (whole, chunked):
        env.reset(seed=2)
        for _ in range(3):  # a full window: 4 edit prompts and 2 unrelated ones, 6 rows
            env.step({"layers": np.ones(n, np.float32), "update": np.full(n, 0.3, np.float32)})
    generator = torch.Generator().manual_seed(4)
    start = [0.01 * torch.randn(d_out, d_in, generator=generator) for d_in, d_out in whole.module_dims()]
    results = []
    for env in (whole, chunked):
        updates = [u.clone().requires_grad_(True) for u in start]
        env.objective([None] * n)  # the unedited model's references, scored once per record
        passes = []
        hook = env.model.register_forward_pre_hook(lambda *_, passes=passes: passes.append(1))
        try:
            terms = env.objective(updates)
            terms.total.backward()
        finally:
            hook.remove()
        results.append((terms, [u.grad for u in updates], len(passes)))
    (a, grads_a, passes_a), (b, grads_b, passes_b) = results
    assert (passes_a, passes_b) == (1, 6)  # 3 chunks, each run again in the backward pass
    for x, y in zip((a.total, a.edit, a.locality, a.per_edit), (b.total, b.edit, b.locality, b.per_edit)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    for x, y in zip(grads_a, grads_b):
        assert x.abs().sum() > 0
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="objective_chunk"):
        make_env(model, objective_chunk=0)
