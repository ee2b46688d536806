"""The locate-then-edit agents (rome, memit, alphaedit) and their parts, on the tiny test models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from hiedit_agents import agent_class, make_agent, run_episode
from hiedit_agents.cli import main as hiedit_main
from hiedit_agents.locate import stats
from hiedit_agents.locate.agents import MLP_OUT_MODULES
from hiedit_agents.locate.solve import (
    alphaedit_absorb,
    alphaedit_directions,
    factors,
    memit_directions,
    memit_factor,
    null_space_basis,
    null_space_inverse,
)
from hiedit_agents.locate.values import ValueObjective, edit_inputs, keys_and_hidden, optimise_value

from hiedit_env.models import load_shared_model
from hiedit_env.tokens import answer_logits, collate, encode_pair, subject_last_token


@pytest.fixture(autouse=True)
def stats_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Key statistics go to a fresh folder per test, never the user's cache."""
    folder = tmp_path / "key_stats"
    monkeypatch.setattr(stats, "DEFAULT_CACHE", folder)
    return folder


def locate_env(make_env, name: str, model: str = "test-tiny-llama", **kwargs) -> gym.Env:
    return make_env(model, evaluate_generation=False, **{**agent_class(name).acting_requirements({}), **kwargs})


def test_subject_last_token_points_at_the_subjects_last_token() -> None:
    tokenizer = load_shared_model("test-tiny-gpt2").tokenizer  # one token per byte
    prompt = "What is the product made by UniFirst?"
    pair = encode_pair(tokenizer, prompt, "uniform")
    position = subject_last_token(tokenizer, prompt, "UniFirst")
    assert tokenizer.decode(pair.ids[position - 7 : position + 1]) == "UniFirst"
    assert subject_last_token(tokenizer, prompt, "unifirst") == position  # case-insensitive fallback
    assert subject_last_token(tokenizer, prompt, "Paris") == pair.answer_start - 1  # absent: the prompt's last token


def test_value_step_lowers_the_new_answers_loss(make_env) -> None:
    env = make_env("test-tiny-llama").unwrapped
    env.reset(seed=0)
    record = env.current_record
    inputs = edit_inputs(env.tokenizer, record.prompt, record.subject, record.target_new, ["", "The cat sat. "])
    module = env.model.get_submodule("model.layers.1.mlp.down_proj")
    # The random model's answer distribution is nearly uniform and hardly depends on one position's
    # hidden state, so the drop is small; the clamp is wide to let the value move.
    target, report = optimise_value(
        env.model,
        module,
        1,
        inputs,
        int(env.tokenizer.pad_token_id),
        steps=20,
        lr=0.5,
        kl_weight=0.0625,
        weight_decay=0.0,
        clamp=100.0,
    )
    assert report["nll_after"] < report["nll_before"] - 5e-3
    assert target.shape == (env.model.config.hidden_size,) and 0 < report["delta_ratio"] <= 100.0 + 1e-4
    _, clamped = optimise_value(
        env.model,
        module,
        1,
        inputs,
        int(env.tokenizer.pad_token_id),
        steps=5,
        lr=0.5,
        kl_weight=0.0625,
        weight_decay=0.0,
        clamp=0.5,
    )
    assert clamped["delta_ratio"] == pytest.approx(0.5, rel=1e-4)


def test_null_space_projection_keeps_preserved_outputs_and_moves_the_edited_one() -> None:
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(16, 10, generator=generator, dtype=torch.float64)
    preserved = basis @ torch.randn(10, 200, generator=generator, dtype=torch.float64)  # keys in a 10-dim subspace
    second_moment = preserved @ preserved.T / 200
    basis = null_space_basis(second_moment, 6 / 16)  # the 6 directions the preserved keys leave empty
    key, residual = (
        torch.randn(16, 1, generator=generator, dtype=torch.float64),
        torch.randn(8, 1, generator=generator, dtype=torch.float64),
    )
    u, v = factors(residual, alphaedit_directions(basis, null_space_inverse(basis, 1e-3), key), torch.float64)
    update = u.T @ v
    assert (update @ preserved).norm() < 1e-8 * preserved.norm()
    assert (update @ key).norm() > 0.5 * residual.norm()


def test_null_space_fraction_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"null_space_fraction must be a finite number in \(0, 1\]"):
        null_space_basis(torch.eye(4), 1.5)


def test_kept_factors_give_the_direct_solves_over_a_long_sequence() -> None:
    """MEMIT's Cholesky-and-Woodbury solve and AlphaEdit's kept inverse, updated edit after edit, equal
    the published per-edit solves ``solve(lambda C + K K^T, K)`` and ``solve(P (K K^T + K_p K_p^T) + l2 I, P K)``."""
    generator = torch.Generator().manual_seed(0)
    d, l2 = 24, 10.0
    scales = torch.logspace(0, -3, d, dtype=torch.float64)[:, None]  # an ill-conditioned C, as real ones are
    samples = torch.randn(d, 500, generator=generator, dtype=torch.float64) * scales
    second_moment = samples @ samples.T / 500
    weighted = 1500.0 * second_moment
    factor = memit_factor(weighted)
    basis = null_space_basis(second_moment, 0.5)
    projector = basis @ basis.T
    inverse, past_gram = null_space_inverse(basis, l2), torch.zeros(d, d, dtype=torch.float64)
    for _ in range(300):  # one key per edit, as the agents solve; then two at once
        keys = 3 * torch.randn(d, 1, generator=generator, dtype=torch.float64)
        direct_memit = torch.linalg.solve(weighted + keys @ keys.T, keys)
        assert torch.allclose(memit_directions(factor, keys), direct_memit, rtol=1e-9, atol=1e-12)
        direct = torch.linalg.solve(
            projector @ (keys @ keys.T + past_gram) + l2 * torch.eye(d, dtype=torch.float64), projector @ keys
        )
        assert torch.allclose(alphaedit_directions(basis, inverse, keys), direct, rtol=1e-8, atol=1e-12)
        inverse, past_gram = alphaedit_absorb(basis, inverse, keys), past_gram + keys @ keys.T
    keys = torch.randn(d, 2, generator=generator, dtype=torch.float64)
    assert torch.allclose(memit_directions(factor, keys), torch.linalg.solve(weighted + keys @ keys.T, keys), rtol=1e-9)


def test_singular_key_statistics_are_refused_clearly() -> None:
    keys = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="key statistics C of m are singular .* raise stats_samples"):
        memit_factor(keys @ keys.T, "m")


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_value_objective_gives_the_full_pass_logits_and_gradients(make_env, model: str) -> None:
    """The cached prefix changes nothing: answer logits and the gradient to ``delta`` equal those of a
    full pass over the padded sequences with ``delta`` added at each subject's last token."""
    env = make_env(model).unwrapped
    env.reset(seed=0)
    record = env.current_record
    # Prefixes of different lengths, and a one-token subject in the KL prompt (nothing cached for that row).
    inputs = edit_inputs(
        env.tokenizer, record.prompt, record.subject, record.target_new, ["", "The cat sat on it. ", "I. "]
    )
    inputs = type(inputs)(inputs.rewrites, inputs.positions, encode_pair(env.tokenizer, "X", "is a"))
    module = env.model.get_submodule(env.candidate_modules[1])
    pad = int(env.tokenizer.pad_token_id)
    delta = torch.randn(env.model.config.hidden_size, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    cached, _ = ValueObjective(env.model, module, inputs, pad)(delta)
    grad_cached = torch.autograd.grad(sum(lg.log_softmax(-1).gather(1, lb[:, None]).sum() for lg, lb in cached), delta)[
        0
    ]

    pairs = [*inputs.rewrites, inputs.kl]
    rows, columns = torch.arange(len(pairs)), torch.tensor([*inputs.positions, inputs.kl.answer_start - 1])

    def add_delta(_module, _args, output):
        added = torch.zeros_like(output)
        added[rows, columns] = delta
        return output + added

    handle = module.register_forward_hook(add_delta)
    try:
        out, batch = answer_logits(env.model, collate(pairs, pad, env.model.device))
    finally:
        handle.remove()
    full = batch.per_pair(out.logits.float())
    grad_full = torch.autograd.grad(sum(lg.log_softmax(-1).gather(1, lb[:, None]).sum() for lg, lb in full), delta)[0]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(cached, full))
    assert all(torch.allclose(a[0], b[0], atol=1e-4) for a, b in zip(cached, full))
    assert torch.allclose(grad_cached, grad_full, rtol=1e-3, atol=1e-5) and grad_full.norm() > 0


def test_keys_pass_stops_at_the_value_block_and_reads_what_a_full_pass_reads(make_env) -> None:
    env = make_env("test-tiny-llama").unwrapped
    env.reset(seed=0)
    record = env.current_record
    inputs = edit_inputs(env.tokenizer, record.prompt, record.subject, record.target_new, ["", "The cat sat. "])
    modules = [env.model.get_submodule(f"model.layers.{i}.mlp.down_proj") for i in (0, 1)]
    pad = int(env.tokenizer.pad_token_id)
    keys, hidden = keys_and_hidden(env.model, modules, [], env.model.model.layers[1], inputs, pad)
    batch = collate([encode_pair(env.tokenizer, p, record.target_new) for p in [record.prompt]], pad, env.model.device)
    with torch.no_grad():
        states = env.model(input_ids=batch.input_ids, use_cache=False, output_hidden_states=True).hidden_states
    assert torch.allclose(hidden, states[2][0, inputs.positions[0]], atol=1e-5)
    assert all(k.shape == (m.in_features,) and k.norm() > 0 for k, m in zip(keys, modules))
    with pytest.raises(ValueError, match="must lie in the block whose output is read, or below it"):
        keys_and_hidden(env.model, modules, [], env.model.model.layers[0], inputs, pad)


def test_alphaedit_accumulates_keys_across_steps_and_reset_clears_them(make_env) -> None:
    env = locate_env(make_env, "alphaedit")
    agent = make_agent("alphaedit", env)
    observation, info = env.reset(seed=0)
    for _ in range(2):
        observation, *_ = env.step(agent.act(observation, info))
    l2 = agent.hparams["l2"]

    def past_grams() -> list[torch.Tensor]:  # B^T K_p K_p^T B, from the kept inverses
        return [torch.linalg.inv(m) - l2 * torch.eye(m.shape[0], dtype=m.dtype) for m in agent.inverses]

    assert agent.past_edits == 2 and all(torch.linalg.matrix_rank(g, rtol=1e-8) == 2 for g in past_grams())
    grams = past_grams()
    observation, info = env.reset(seed=1)
    agent.act(observation, info)
    assert agent.past_edits == 1
    assert all(not torch.allclose(a, b) for a, b in zip(grams, past_grams()))
    assert all(torch.linalg.matrix_rank(g, rtol=1e-8) == 1 for g in past_grams())  # the new sequence's one key


def test_statistics_are_cached_reused_and_refused_for_another_key(
    make_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env("test-tiny-llama").unwrapped
    calls: list[int] = []
    compute = stats.sampled_second_moments

    def counted(*args, **kwargs):
        calls.append(1)
        return compute(*args, **kwargs)

    monkeypatch.setattr(stats, "sampled_second_moments", counted)
    names = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    cache = tmp_path / "cache"
    first = stats.key_second_moments(
        env.model, env.tokenizer, "test-tiny-llama", names, samples=8, length=8, cache_dir=cache
    )
    again = stats.key_second_moments(
        env.model, env.tokenizer, "test-tiny-llama", names, samples=8, length=8, cache_dir=cache
    )
    assert len(calls) == 1 and len(list(cache.glob("*.pt"))) == 2
    assert all(torch.equal(first[n], again[n]) for n in names)
    assert first[names[0]].shape == (128, 128) and torch.allclose(first[names[0]], first[names[0]].T)
    # Two text files of the same name give the same cache file name: the second is refused, not used.
    for folder, text in (("a", "the cat sat on the mat\nthe dog ran\n"), ("b", "something else entirely\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "texts.txt").write_text(text)
    stats.key_second_moments(
        env.model,
        env.tokenizer,
        "test-tiny-llama",
        names[:1],
        str(tmp_path / "a" / "texts.txt"),
        samples=2,
        length=8,
        cache_dir=cache,
    )
    with pytest.raises(ValueError, match="was computed for .* delete it or pass another stats_dir"):
        stats.key_second_moments(
            env.model,
            env.tokenizer,
            "test-tiny-llama",
            names[:1],
            str(tmp_path / "b" / "texts.txt"),
            samples=2,
            length=8,
            cache_dir=cache,
        )


def test_statistics_read_jsonl_and_refuse_unknown_sources(make_env, tmp_path: Path) -> None:
    env = make_env("test-tiny-llama").unwrapped
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": "a first text"}) + "\n\n" + json.dumps({"text": "a second one"}) + "\n")
    moments = stats.key_second_moments(
        env.model,
        env.tokenizer,
        "test-tiny-llama",
        ["model.layers.0.mlp.down_proj"],
        str(texts),
        samples=5,
        length=8,
        cache_dir=tmp_path,
    )
    assert moments["model.layers.0.mlp.down_proj"].shape == (128, 128)
    with pytest.raises(ValueError, match="neither 'model', 'hf:ID\\[:CONFIG\\]' nor an existing file"):
        stats.key_second_moments(
            env.model,
            env.tokenizer,
            "test-tiny-llama",
            ["model.layers.0.mlp.down_proj"],
            str(tmp_path / "missing.txt"),
            cache_dir=tmp_path,
        )


def test_compare_second_moments_is_zero_for_equal_matrices_and_positive_otherwise() -> None:
    a = torch.randn(12, 40, generator=torch.Generator().manual_seed(0))
    first, second = a @ a.T, (a + 1) @ (a + 1).T
    same = stats.compare_second_moments(first, first, top=4)
    assert same["relative_frobenius"] == pytest.approx(0.0, abs=1e-12) and same[
        "top_subspace_overlap"
    ] == pytest.approx(1.0)
    other = stats.compare_second_moments(first, second, top=4)
    assert other["relative_frobenius"] > 0.1 and other["top_subspace_overlap"] < 1.0


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("memit", {"layers": [3]}, r"layers must be blocks in \[0, 2\]"),
        ("memit", {"layers": [1, 0]}, "ascending list"),
        ("alphaedit", {"null_space_fraction": 0.0}, r"null_space_fraction must be a finite number in \(0, 1\]"),
        ("memit", {"value_lr": -1}, "value_lr must be"),
        ("rome", {"layers": [0, 1]}, "rome edits one block"),
        ("memit", {"lr": 0.1}, r"unknown hyperparameters \['lr'\]"),
    ],
)
def test_bad_hyperparameters_are_refused_clearly(make_env, name: str, kwargs: dict, message: str) -> None:
    env = locate_env(make_env, name)
    with pytest.raises(ValueError, match=message):
        make_agent(name, env, **kwargs)


def test_a_layer_that_is_not_a_candidate_is_refused(make_env) -> None:
    env = make_env("test-tiny-llama", update_mode="low_rank", modules=["model.layers.2.mlp.down_proj"])
    with pytest.raises(ValueError, match=r"not candidate modules of this environment; make it with modules="):
        make_agent("memit", env)


@pytest.mark.parametrize("name", ["rome", "memit", "alphaedit"])
@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_locate_agents_edit_through_the_environment(make_env, name: str, model: str) -> None:
    env = locate_env(make_env, name, model)
    agent = make_agent(name, env)
    assert env.unwrapped.candidate_modules == [
        n for n, _ in env.unwrapped.model.named_modules() if re.fullmatch(MLP_OUT_MODULES, n)
    ]
    metrics = run_episode(agent, env, seed=0, progress=False)
    assert metrics["num_edits"] == 3 and metrics["layers_per_edit"] == len(agent.blocks)
    chosen = {env.unwrapped.candidate_modules[i] for i in agent.indices}
    assert {m for m, share in metrics["module_share"].items() if share > 0} == chosen
    assert 0.0 <= metrics["mean"] <= 1.0


def test_environment_runs_on_unedited_weights_inside_unedited(make_env, helpers) -> None:
    env = make_env("test-tiny-llama")
    env.reset(seed=0)
    env.step(helpers.full_action(env, update=1.0))
    edited = helpers.snapshot(env)
    unwrapped = env.unwrapped
    names = unwrapped.candidate_modules

    def live() -> list[torch.Tensor]:  # the modules' own weights: candidate_weights() would swap the edits back in
        return [m.weight.detach().clone() for m in unwrapped.shared.modules(names).values()]

    with unwrapped.unedited():
        assert helpers.same_weights(live(), [unwrapped.shared.base[n] for n in names])
    assert helpers.same_weights(live(), edited) and not helpers.same_weights(edited, helpers.base_weights(env))


@pytest.mark.parametrize("name", ["rome", "memit", "alphaedit"])
def test_hiedit_evaluate_runs_the_locate_agents(tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.json"
    assert (
        hiedit_main(
            [
                "evaluate",
                "--agent",
                name,
                "--model",
                "test-tiny-gpt2",
                "--dataset",
                "default",
                "--num-edits",
                "2",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["agent"] == name and result["num_edits"] == 2 and "ES_gen" in result and result["peak_rss_mb"] > 0


def test_hiedit_evaluate_refuses_bad_locate_hyperparameters_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = hiedit_main(
        [
            "evaluate",
            "--agent",
            "alphaedit",
            "--model",
            "test-tiny-gpt2",
            "--dataset",
            "default",
            "--num-edits",
            "2",
            "--agent-kwargs",
            '{"null_space_fraction": 2}',
            "--out",
            str(tmp_path / "x.json"),
        ]
    )
    assert code == 2
    assert "hiedit evaluate: error: null_space_fraction must be a finite number in (0, 1]" in capsys.readouterr().err


def test_residual_tool_reports_more_of_the_residual_realised_at_a_smaller_mom2_weight(
    zsre_path: str, tmp_path: Path
) -> None:
    from hiedit_agents.locate.residual import main as residual_main

    out = tmp_path / "residual.json"
    assert (
        residual_main(
            [
                "--model",
                "test-tiny-llama",
                "--dataset",
                zsre_path,
                "--num-edits",
                "2",
                "--seed",
                "0",
                "--mom2-weights",
                "10000",
                "10",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    large, small = json.loads(out.read_text())["per_weight"]
    assert all(0 < a < b < 1 for a, b in zip(large["gain_per_block"], small["gain_per_block"]))
    assert large["realised_share"] < small["realised_share"] and len(small["realised_share_per_edit"]) == 2
