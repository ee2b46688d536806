"""Tokens and trace: shapes, exact weight gradients for Conv1D and Linear, no autograd leftovers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from hiedit_env.models import build_test_model, weight_as_linear
from hiedit_env.objective import row_losses
from hiedit_env.score import score_pairs
from hiedit_env.tokens import answer_logits, batch_for, collate, encode_pair, encode_record, pack, packs_sequences
from hiedit_env.trace import trace_edit


def test_encode_pair_marks_the_answer():
    from hiedit_env.models import byte_tokenizer

    tok = byte_tokenizer()
    pair = encode_pair(tok, "The capital of France is", "Paris")
    assert tok.decode(pair.prompt.tolist()) == "The capital of France is"
    assert tok.decode(pair.answer.tolist()) == " Paris"
    batch = collate([pair, encode_pair(tok, "Hi", "there")], pad_id=tok.pad_token_id, device=torch.device("cpu"))
    # The logits at position p predict token p + 1: labels are the answer shifted by one.
    row = batch.labels[0][batch.answer_mask[0]]
    assert torch.equal(row, pair.answer)
    assert batch.attention_mask[1].sum() == len("Hi there")


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_trace_shapes_per_module(make_env, model):
    env = make_env(model).unwrapped
    env.reset(seed=0)
    trace = env.edit_trace
    record = env.current_record
    n_tokens = len(encode_record(env.tokenizer, record).edit.ids)
    assert trace.module_names == env.candidate_modules
    assert len(trace.keys) == len(trace.grads) == len(env.candidate_modules)
    for i, (d_in, d_out) in enumerate(env.module_dims()):
        assert trace.keys[i].shape == (n_tokens, d_in)
        assert trace.grads[i].shape == (n_tokens, d_out)
        assert trace.weight_gradient(i).shape == (d_out, d_in)
        assert torch.isfinite(trace.keys[i]).all() and torch.isfinite(trace.grads[i]).all()
        assert trace.grads[i].abs().sum() > 0
    assert trace.hidden.shape == (n_tokens, env.model.config.hidden_size)
    assert trace.loss > 0


def test_subject_position_is_the_trace_row_of_the_subjects_last_token(make_env):
    env = make_env("test-tiny-gpt2").unwrapped
    env.reset(seed=0)
    record = env.current_record
    assert record.subject and record.subject in record.prompt
    position = env.subject_position
    ids = encode_record(env.tokenizer, record).edit.ids
    # the byte tokenizer: one token per character
    assert env.tokenizer.decode(ids[: position + 1].tolist()).endswith(record.subject)
    rows = env.edit_trace.rows([position])
    for i in range(len(env.candidate_modules)):
        assert torch.equal(rows.keys[i], env.edit_trace.keys[i][position : position + 1])
        assert torch.equal(rows.grads[i], env.edit_trace.grads[i][position : position + 1])
    assert torch.equal(rows.hidden, env.edit_trace.hidden[position : position + 1])


def _real_weight_gradients(name: str, modules: list[str], pair, pad_id: int) -> list[torch.Tensor]:
    """d(loss)/dW from a plain loss.backward() on a fresh copy of the model, in Linear orientation."""
    model, _ = build_test_model(name)
    model.eval()
    model.requires_grad_(False)
    weights = [model.get_submodule(m).weight for m in modules]
    for w in weights:
        w.requires_grad_(True)
    batch = collate([pair], pad_id, model.device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    mask = batch.answer_mask[0]
    loss = F.cross_entropy(logits[0][mask].float(), batch.labels[0][mask])
    loss.backward()
    # Conv1D stores W as [d_in, d_out]: its gradient too, so transpose it to Linear orientation.
    return [w.grad.T if isinstance(model.get_submodule(m), Conv1D) else w.grad for m, w in zip(modules, weights)]


@pytest.mark.parametrize(
    "model,modules",
    [
        ("test-tiny-gpt2", None),  # Conv1D c_proj of every block
        ("test-tiny-llama", None),  # Linear down_proj of every block
        # Unordered, several per block, different shapes: the graph must still start at the lowest one.
        ("test-tiny-gpt2", ["transformer.h.3.mlp.c_proj", "transformer.h.1.mlp.c_fc", "transformer.h.1.attn.c_attn"]),
        (
            "test-tiny-llama",
            ["model.layers.2.mlp.up_proj", "model.layers.0.self_attn.q_proj", "model.layers.2.mlp.gate_proj"],
        ),
    ],
)
def test_weight_gradient_equals_real_backward(make_env, model, modules):
    env = make_env(model, modules=modules).unwrapped
    env.reset(seed=0, options={"records": [3]})
    pair = encode_record(env.tokenizer, env.current_record).edit
    expected = _real_weight_gradients(model, env.candidate_modules, pair, env.tokenizer.pad_token_id)
    trace = env.edit_trace
    for i, name in enumerate(env.candidate_modules):
        got = trace.weight_gradient(i)
        assert got.shape == expected[i].shape, name
        assert expected[i].abs().max() > 0, name
        assert torch.allclose(got, expected[i], rtol=1e-5, atol=1e-7), name
    # The recorded loss is the same cross-entropy the scorer reports as the answer's NLL.
    nll = float(score_pairs(env.model, [pair], env.tokenizer.pad_token_id).nll[0])
    assert trace.loss == pytest.approx(nll, rel=1e-5)


def test_trace_function_directly_matches_env(make_env):
    env = make_env("test-tiny-llama").unwrapped
    env.reset(seed=1)
    pair = encode_record(env.tokenizer, env.current_record).edit
    modules = list(env.shared.modules(env.candidate_modules).values())
    again = trace_edit(env.model, modules, env.candidate_modules, pair, env.tokenizer.pad_token_id, 2)
    for a, b in zip(again.keys + again.grads, env.edit_trace.keys + env.edit_trace.grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_tracing_leaves_no_autograd_state(make_env, helpers, model):
    env = make_env(model).unwrapped
    grad_mode = torch.is_grad_enabled()
    env.reset(seed=0)
    for _ in range(2):
        env.step(helpers.full_action(env, 1.0, 0.5))
    assert torch.is_grad_enabled() == grad_mode
    for name, param in env.model.named_parameters():
        assert not param.requires_grad, name
        assert param.grad is None, name
    trace = env.edit_trace
    for t in [*trace.keys, *trace.grads, trace.hidden]:
        assert not t.requires_grad and t.grad_fn is None


class _NoLogitSlicing(torch.nn.Module):
    """A causal LM whose ``forward`` takes no ``logits_to_keep`` (as some remote-code models)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.device = model.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


class _NoPositions(torch.nn.Module):
    """A causal LM that drops ``position_ids``, so it cannot tell packed sequences apart."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.device = model.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def _episode_pairs(env) -> list:
    return [
        p
        for r in env.episode_records()
        for p in (encode_record(env.tokenizer, r).edit, encode_record(env.tokenizer, r).loc)
    ]


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_packed_pairs_give_the_padded_logits(make_env, model):
    env = make_env(model, num_edits=4).unwrapped
    env.reset(seed=2)
    pairs = _episode_pairs(env)
    assert len({len(p.ids) for p in pairs}) > 2  # padding would differ from row to row
    assert packs_sequences(env.model)
    packed = pack(pairs, env.model.device)
    assert packed.input_ids.shape == (1, sum(len(p.ids) for p in pairs)) and packed.tokens.all()
    with torch.no_grad():
        rows = [
            answer_logits(env.model, b) for b in (packed, collate(pairs, env.tokenizer.pad_token_id, env.model.device))
        ]
    (got, got_batch), (want, want_batch) = rows
    for (a, labels_a), (b, labels_b), pair in zip(
        got_batch.per_pair(got.logits), want_batch.per_pair(want.logits), pairs
    ):
        assert torch.equal(labels_a, pair.answer) and torch.equal(labels_b, pair.answer)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_a_model_blind_to_packing_gets_padded_batches_and_the_same_objective(make_env, model):
    env = make_env(model, num_edits=4).unwrapped
    env.reset(seed=2)
    pairs, pad = _episode_pairs(env), env.tokenizer.pad_token_id
    blind = _NoPositions(env.model)
    assert not packs_sequences(blind)
    assert batch_for(blind, pairs, pad).attention_mask is not None
    assert batch_for(env.model, pairs, pad).attention_mask is None
    modules = [env.model.get_submodule(n) for n in env.candidate_modules]
    update = torch.zeros_like(weight_as_linear(modules[0]), requires_grad=True)
    references = [None] * len(pairs)
    losses = [
        row_losses(lm, modules, [update] + [None] * (len(modules) - 1), pairs, references, pad)[0]
        for lm in (env.model, blind)
    ]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    grads = [torch.autograd.grad(loss.sum(), update)[0] for loss in losses]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
@pytest.mark.parametrize("slicing", [True, False])
def test_batched_scores_match_one_pair_at_a_time(make_env, model, slicing):
    # Batches sorted by length with logits on the answer columns only, put back in the callers' order.
    env = make_env(model, num_edits=8).unwrapped
    env.reset(seed=1)
    pad = env.tokenizer.pad_token_id
    pairs = [
        p
        for r in env.episode_records()
        for p in (encode_record(env.tokenizer, r).loc, encode_record(env.tokenizer, r).edit)
    ]
    assert len({len(p.ids) for p in pairs}) > 3  # lengths differ, so sorting reorders them
    lm = env.model if slicing else _NoLogitSlicing(env.model)
    batched = score_pairs(lm, pairs, pad, batch_size=5, keep_log_probs=True)
    for i, pair in enumerate(pairs):
        batch = collate([pair], pad, env.model.device)
        logits = env.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[0][
            batch.answer_mask[0]
        ]
        labels = batch.labels[0][batch.answer_mask[0]]
        assert torch.equal(batched.predictions[i], logits.argmax(-1))
        assert float(batched.nll[i]) == pytest.approx(float(F.cross_entropy(logits, labels)), abs=1e-5)
        assert torch.allclose(batched.log_probs[i], logits.log_softmax(-1), atol=1e-5)


@pytest.mark.parametrize("model", ["test-tiny-gpt2", "test-tiny-llama"])
def test_objective_pass_gives_the_edit_trace_and_the_objective_trace(make_env, helpers, model):
    """``trace_covers="objective"``: one pass per edit yields both traces, equal to the two separate passes."""
    fused = make_env(model, update_mode="low_rank", num_edits=4, back_depth=2, trace_covers="objective").unwrapped
    plain = make_env(model, update_mode="low_rank", num_edits=4, back_depth=2).unwrapped
    n = len(fused.candidate_modules)
    observations = [fused.reset(seed=3)[0], plain.reset(seed=3)[0]]
    for _ in range(3):  # the window fills up: the edits so far (at most 3) and the unrelated prompt
        for name in ("instance", "layers", "progress"):
            np.testing.assert_allclose(observations[0][name], observations[1][name], rtol=1e-4, atol=1e-5)
        a, b = fused.edit_trace, plain.edit_trace
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
        torch.testing.assert_close(a.hidden, b.hidden, rtol=1e-4, atol=1e-5)
        for i in range(n):
            torch.testing.assert_close(a.keys[i], b.keys[i], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(a.grads[i], b.grads[i], rtol=1e-4, atol=1e-6)
        passes = []
        hook = fused.model.register_forward_pre_hook(lambda *_, passes=passes: passes.append(1))
        try:
            cached = fused.objective_trace([None] * n)
        finally:
            hook.remove()
        assert passes == []  # the edit's pass made it
        fresh = plain.objective_trace([None] * n)
        assert cached.loss == pytest.approx(fresh.loss, rel=1e-5)
        for i in range(n):
            assert cached.keys[i].shape[0] > a.keys[i].shape[0]  # the window's and unrelated prompts' rows too
            torch.testing.assert_close(cached.keys[i], fresh.keys[i], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(cached.grads[i], fresh.grads[i], rtol=1e-4, atol=1e-6)
        # the same factored update on both: the edited models stay identical
        update = [(g[:1].clone(), k[:1].clone() * 1e-2) for g, k in zip(a.grads, a.keys)]
        action = {"layers": np.ones(n, np.float32), "update": update}
        passes.clear()
        hook = fused.model.register_forward_pre_hook(
            lambda _m, args, kwargs, passes=passes: passes.append(kwargs["input_ids"].shape), with_kwargs=True
        )
        try:
            (obs_fused, reward_fused, *_, info_fused), (obs_plain, reward_plain, *_, info_plain) = (
                fused.step(action),
                plain.step(action),
            )
        finally:
            hook.remove()
        observations = [obs_fused, obs_plain]
        assert helpers.same_weights(helpers.snapshot(fused), helpers.snapshot(plain))
        # Both envs run the one shared model. The fused env takes the edit's ES from the next edit's
        # pass (packed: one row) and then scores the paraphrase and the unrelated prompt only; the
        # plain env traces the next edit and scores all three. The reward is the same.
        assert [shape[0] for shape in passes] == [1, 2, 1, 3]
        assert info_fused["edit_success"] == pytest.approx(info_plain["edit_success"], abs=1e-6)
        assert reward_fused == pytest.approx(reward_plain, abs=1e-6)


@pytest.mark.parametrize("back_depth,w_sequence,reused", [(0, 0.0, False), (2, 1.0, False), (2, 0.0, True)])
def test_edit_success_is_reused_only_when_the_next_pass_ran_the_edit(make_env, helpers, back_depth, w_sequence, reused):
    """Without the edit in the next edit's window (``back_depth`` 0), or with the whole sequence
    rescored (``w_sequence``), the scoring pass scores the edit itself, as after the last edit."""
    kwargs = {"num_edits": 3, "back_depth": back_depth, "w_sequence": w_sequence}
    fused = make_env("test-tiny-llama", trace_covers="objective", **kwargs).unwrapped
    plain = make_env("test-tiny-llama", **kwargs).unwrapped
    fused.reset(seed=4), plain.reset(seed=4)
    action = helpers.full_action(fused, 1.0, 0.5)
    for t in range(3):
        rows = []
        hook = fused.model.register_forward_pre_hook(
            lambda _m, args, kw, rows=rows: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
        )
        try:
            info = fused.step(action)[-1]
        finally:
            hook.remove()
        if t < 2:  # the last step's passes end with the sequence's evaluation
            scored_edits = t + 1 if w_sequence else 1
            assert rows[-1] == scored_edits * (2 if reused else 3)
        assert info["edit_success"] == pytest.approx(plain.step(action)[-1]["edit_success"], abs=1e-6)


def test_objective_trace_under_an_update_is_still_computed(make_env):
    env = make_env("test-tiny-llama", update_mode="low_rank", trace_covers="objective").unwrapped
    env.reset(seed=0)
    n = len(env.candidate_modules)
    plain = env.objective_trace([None] * n)
    k, g = env.edit_trace.keys[0], env.edit_trace.grads[0]
    moved = env.objective_trace([(g[:1] * 10.0, k[:1]), *[None] * (n - 1)])
    assert moved is not plain and not torch.allclose(moved.grads[-1], plain.grads[-1])
    with pytest.raises(ValueError, match="objective expects"):
        env.objective_trace([None] * (n + 1))


def test_trace_argument_is_checked(make_env):
    with pytest.raises(ValueError, match="trace_covers must be 'edit' or 'objective'"):
        make_env(trace_covers="window")
