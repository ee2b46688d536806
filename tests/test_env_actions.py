"""Actions: step-size mapping, top-k layer choice, refused actions leave the model untouched,
low-rank inputs in every accepted form, and the documented cap on an update's size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hiedit_env import ActionError
from hiedit_env.action import parse_action, step_size_from_action

ETA = (0.002, 0.2)


@pytest.mark.parametrize(
    "value,expected",
    [
        (-1.0, 0.002),
        (1.0, 0.2),
        (0.0, math.sqrt(0.002 * 0.2)),
        (-5.0, 0.002),
        (7.5, 0.2),
        (0.5, math.exp((math.log(0.002) * 1 + math.log(0.2) * 3) / 4)),
    ],
)
def test_step_size_mapping(value, expected):
    assert step_size_from_action(value, ETA) == pytest.approx(expected, rel=1e-12)


def test_step_size_mapping_is_monotone():
    values = [step_size_from_action(v, ETA) for v in np.linspace(-1, 1, 21)]
    assert all(a < b for a, b in zip(values, values[1:]))


def test_step_size_moves_along_the_negative_gradient_by_eta(make_env):
    env = make_env("test-tiny-gpt2").unwrapped
    env.reset(seed=0)
    n = len(env.candidate_modules)
    before = [w.clone() for w in env.candidate_weights()]
    grads = [env.edit_trace.weight_gradient(i).clone() for i in range(n)]
    update = np.linspace(-1, 1, n).astype(np.float32)
    env.step({"layers": np.ones(n, np.float32), "update": update})
    for i, (w0, w1) in enumerate(zip(before, env.candidate_weights())):
        delta = w1 - w0
        eta = step_size_from_action(float(update[i]), env.eta_range)
        assert float(delta.norm() / w0.norm()) == pytest.approx(eta, rel=1e-3)
        cosine = torch.nn.functional.cosine_similarity(delta.flatten(), -grads[i].flatten(), dim=0)
        assert float(cosine) > 0.9999


def test_out_of_range_step_is_clipped(make_env, helpers):
    a = make_env("test-tiny-llama").unwrapped
    b = make_env("test-tiny-llama").unwrapped
    a.reset(seed=4)
    a.step(helpers.full_action(a, 1.0, 1.0))
    weights_a = helpers.snapshot(a)
    b.reset(seed=4)
    b.step(helpers.full_action(b, 3.0, 25.0))  # layers clip to 1, update clips to 1
    assert helpers.same_weights(weights_a, helpers.snapshot(b))


def test_mask_without_budget_takes_values_above_half(make_env, helpers):
    env = make_env("test-tiny-llama").unwrapped
    env.reset(seed=0)
    before = helpers.snapshot(env)
    *_, info = env.step({"layers": np.array([0.9, 0.5, 0.2, 1.0], np.float32), "update": np.zeros(4, np.float32)})
    assert info["layers_chosen"] == [0, 3]
    assert info["num_layers_chosen"] == 2
    assert info["sparsity"] == pytest.approx(0.5)
    after = helpers.snapshot(env)
    assert [not torch.equal(x, y) for x, y in zip(before, after)] == [True, False, False, True]


def test_layer_budget_picks_exactly_the_top_k(make_env, helpers):
    env = make_env("test-tiny-gpt2", layer_budget=2).unwrapped
    env.reset(seed=0)
    before = helpers.snapshot(env)
    *_, info = env.step({"layers": np.array([0.1, 0.9, 0.3, 0.8], np.float32), "update": np.zeros(4, np.float32)})
    assert info["layers_chosen"] == [1, 3]
    after = helpers.snapshot(env)
    assert [not torch.equal(x, y) for x, y in zip(before, after)] == [False, True, False, True]
    # Scores all below 0.5 still choose exactly k.
    *_, info = env.step({"layers": np.array([0.05, 0.0, 0.2, 0.1], np.float32), "update": np.zeros(4, np.float32)})
    assert info["layers_chosen"] == [2, 3]


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_parse_action_top_k(k):
    rng = np.random.default_rng(k)
    scores = rng.random(6).astype(np.float32)
    parsed = parse_action(
        {"layers": scores, "update": np.zeros(6)},
        6,
        "step_size",
        [(4, 4)] * 6,
        k,
        ETA,
        torch.device("cpu"),
        torch.float32,
    )
    assert len(parsed.chosen) == k
    assert set(parsed.chosen) == set(np.argsort(-scores)[:k].tolist())
    assert parsed.chosen == sorted(parsed.chosen)
    assert len(parsed.step_sizes) == k


def _bad_step_actions(n: int):
    ok = np.zeros(n, np.float32)
    nan = ok.copy()
    nan[1] = np.nan
    inf = ok.copy()
    inf[0] = np.inf
    return {
        "short layers": {"layers": np.ones(n - 1, np.float32), "update": ok},
        "2d update": {"layers": np.ones(n, np.float32), "update": np.zeros((n, 1), np.float32)},
        "nan update": {"layers": np.ones(n, np.float32), "update": nan},
        "inf update": {"layers": np.ones(n, np.float32), "update": inf},
        "nan layers": {"layers": nan + 1, "update": ok},
        "-inf layers": {"layers": -inf, "update": ok},
        "missing key": {"layers": np.ones(n, np.float32)},
        "extra key": {"layers": np.ones(n, np.float32), "update": ok, "bonus": 1},
        "wrong keys": {"mask": np.ones(n, np.float32), "steps": ok},
        "not a dict": np.ones(2 * n, np.float32),
        "a list": [np.ones(n), ok],
        "string update": {"layers": np.ones(n, np.float32), "update": "big"},
        "none update": {"layers": np.ones(n, np.float32), "update": None},
        "object layers": {"layers": object(), "update": ok},
    }


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_bad_step_size_action_is_refused_and_changes_nothing(make_env, helpers, subtests, model):
    env = make_env(model).unwrapped
    env.reset(seed=0)
    env.step(helpers.full_action(env, 1.0, 0.0))  # a real edit first: the model is not at its base
    n = len(env.candidate_modules)
    for case, action in _bad_step_actions(n).items():
        with subtests.test(case=case):
            before = helpers.snapshot(env)
            with pytest.raises(ActionError):
                env.step(action)
            assert helpers.same_weights(before, helpers.snapshot(env))
            assert env.edit_index == 1
    env.step(helpers.full_action(env, 1.0, 0.0))  # still usable
    assert env.edit_index == 2


def _bad_low_rank_updates(dims):
    good = [(torch.randn(2, d_out), torch.randn(2, d_in)) for d_in, d_out in dims]
    (d_in, d_out) = dims[0]

    def with_first(entry):
        return [entry, *good[1:]]

    return {
        "too few entries": good[:-1],
        "u wrong width": with_first((torch.randn(2, d_out + 1), torch.randn(2, d_in))),
        "v wrong width": with_first((torch.randn(2, d_out), torch.randn(2, d_in - 1))),
        "rank mismatch": with_first((torch.randn(2, d_out), torch.randn(3, d_in))),
        "1d factors": with_first((torch.randn(d_out), torch.randn(d_in))),
        "nan in u": with_first((torch.full((2, d_out), float("nan")), torch.randn(2, d_in))),
        "inf in v": with_first((torch.randn(2, d_out), torch.full((2, d_in), float("inf")))),
        "nan dense": with_first(torch.full((d_out, d_in), float("nan"))),
        "dense transposed": with_first(torch.randn(d_in, d_out)),
        "overflowing product": with_first((torch.full((2, d_out), 1e30), torch.full((2, d_in), 1e30))),
        "none for chosen": with_first(None),
        "dict missing v": with_first({"u": torch.randn(2, d_out)}),
        "strings": with_first(("ab", "cd")),
        "a number": with_first(3),
        "one factor": with_first((torch.randn(2, d_out),)),
        "an object": with_first(object()),
        "not a sequence": "update",
    }


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_bad_low_rank_action_is_refused_and_changes_nothing(make_env, helpers, subtests, model):
    env = make_env(model, update_mode="low_rank").unwrapped
    env.reset(seed=0)
    n = len(env.candidate_modules)
    torch.manual_seed(0)
    first = [(0.01 * torch.randn(2, d_out), 0.01 * torch.randn(2, d_in)) for d_in, d_out in env.module_dims()]
    env.step({"layers": np.ones(n, np.float32), "update": first})
    for case, update in _bad_low_rank_updates(env.module_dims()).items():
        with subtests.test(case=case):
            before = helpers.snapshot(env)
            with pytest.raises(ActionError):
                env.step({"layers": np.ones(n, np.float32), "update": update})
            assert helpers.same_weights(before, helpers.snapshot(env))
            assert env.edit_index == 1


def _low_rank_env(make_env, model="test-tiny-gpt2", **kwargs):
    env = make_env(model, update_mode="low_rank", rank=4, **kwargs).unwrapped
    env.reset(seed=0)
    return env


LOW_RANK_FORMS = ("torch", "numpy", "dict", "rank1", "rank7", "dense")


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_low_rank_forms_apply_exactly_u_t_v(make_env, helpers, subtests, model):
    env = _low_rank_env(make_env, model, num_edits=len(LOW_RANK_FORMS) + 1)
    n = len(env.candidate_modules)
    gen = torch.Generator().manual_seed(1)
    for form in LOW_RANK_FORMS:
        with subtests.test(form=form):
            rank = {"rank1": 1, "rank7": 7}.get(form, 4)  # the declared rank is 4: any rank is accepted
            factors = [
                (0.02 * torch.randn(rank, d_out, generator=gen), 0.02 * torch.randn(rank, d_in, generator=gen))
                for d_in, d_out in env.module_dims()
            ]
            expected = [u.T @ v for u, v in factors]
            if form == "numpy":
                update = [(u.numpy(), v.numpy()) for u, v in factors]
            elif form == "dict":
                update = [{"u": u, "v": v} for u, v in factors]
            elif form == "dense":
                update = expected
            else:
                update = factors
            before = helpers.snapshot(env)
            env.step({"layers": np.ones(n, np.float32), "update": update})
            for w0, w1, dw, norm in zip(before, env.candidate_weights(), expected, env.base_weight_norms()):
                assert float(dw.norm()) < env.max_update_ratio * norm  # below the cap: applied as it is
                assert torch.allclose(w1 - w0, dw, atol=1e-6)


def test_low_rank_none_for_unchosen_modules(make_env, helpers):
    env = _low_rank_env(make_env, "test-tiny-llama")
    (d_in, d_out) = env.module_dims()[2]
    update = [None, None, (0.01 * torch.ones(1, d_out), 0.01 * torch.ones(1, d_in)), None]
    before = helpers.snapshot(env)
    *_, info = env.step({"layers": np.array([0, 0, 1, 0], np.float32), "update": update})
    assert info["layers_chosen"] == [2]
    after = helpers.snapshot(env)
    assert [not torch.equal(x, y) for x, y in zip(before, after)] == [False, False, True, False]


def test_low_rank_tensor_requiring_grad_is_accepted(make_env):
    env = _low_rank_env(make_env, "test-tiny-gpt2")
    n = len(env.candidate_modules)
    update = [
        (torch.zeros(2, d_out, requires_grad=True), torch.zeros(2, d_in, requires_grad=True))
        for d_in, d_out in env.module_dims()
    ]
    env.step({"layers": np.ones(n, np.float32), "update": update})
    assert not any(p.requires_grad for p in env.model.parameters())


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_max_update_ratio_caps_a_huge_update(make_env, helpers, model):
    env = _low_rank_env(make_env, model, max_update_ratio=0.1)
    n = len(env.candidate_modules)
    gen = torch.Generator().manual_seed(2)
    update = [
        (1e3 * torch.randn(4, d_out, generator=gen), 1e3 * torch.randn(4, d_in, generator=gen))
        for d_in, d_out in env.module_dims()
    ]
    base = helpers.base_weights(env)
    *_, info = env.step({"layers": np.ones(n, np.float32), "update": update})
    for w, w0 in zip(env.candidate_weights(), base):
        ratio = float((w - w0).norm() / w0.norm())
        assert ratio <= 0.1 * (1 + 1e-5)
        assert ratio == pytest.approx(0.1, rel=1e-4)  # the cap is a clip, not a rejection
    assert info["update_norm"] == pytest.approx(1.0, rel=1e-4)


def test_step_size_never_exceeds_the_cap(make_env, helpers):
    env = make_env("test-tiny-llama", eta_range=(0.1, 2.0), max_update_ratio=0.05).unwrapped
    env.reset(seed=0)
    base = helpers.base_weights(env)
    env.step(helpers.full_action(env, 1.0, 1.0))
    for w, w0 in zip(env.candidate_weights(), base):
        assert float((w - w0).norm() / w0.norm()) <= 0.05 * (1 + 1e-5)
