"""The shaped models (published architectures, random weights, for measuring), 16-bit weights, devices,
``hiedit speed`` and ``benchmarks/gpu.sh``.

The full shaped models are too large for the suite: their sizes are checked on the meta device (no
memory), and episodes run on their narrowed copies (same depth, heads and presets, narrow widths)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hiedit_agents import agent_class
from hiedit_agents.cli import main
from torch import nn
from transformers.pytorch_utils import Conv1D

from hiedit_env.env import LAYER_FEATURES
from hiedit_env.models import SHAPE_MODELS, load_shared_model, module_dims, shape_config

REPO = Path(__file__).resolve().parents[1]
GPT2_XL_C_PROJ = [f"transformer.h.{i}.mlp.c_proj" for i in range(13, 18)]


def _meta_model(name: str) -> nn.Module:
    config, cls = shape_config(name)
    with torch.device("meta"):
        return cls(config)


def test_shaped_models_have_the_published_sizes_and_candidates():
    gpt2 = _meta_model("shape:gpt2-xl")
    assert sum(p.numel() for p in gpt2.parameters()) == 1_557_611_200  # GPT-2 XL's count (tied embeddings)
    assert SHAPE_MODELS["shape:gpt2-xl"].preset() == GPT2_XL_C_PROJ
    assert {module_dims(gpt2.get_submodule(n)) for n in GPT2_XL_C_PROJ} == {(6400, 1600)}
    assert isinstance(gpt2.get_submodule(GPT2_XL_C_PROJ[0]), Conv1D)

    llama = _meta_model("shape:llama-3-8b-2layers")
    assert llama.config.num_hidden_layers == 2 and llama.config.vocab_size == 128256
    block = llama.model.layers[0]
    assert module_dims(block.mlp.gate_proj) == (4096, 14336) and module_dims(block.mlp.down_proj) == (14336, 4096)
    assert module_dims(block.self_attn.k_proj) == (4096, 1024)  # 8 key-value heads of 128
    assert not llama.config.tie_word_embeddings  # as in Llama-3-8B: a separate output layer
    # gate_proj 11-15 and up_proj 18-24 of 32 blocks, at the same relative depth in 2.
    assert SHAPE_MODELS["shape:llama-3-8b-2layers"].preset() == [
        "model.layers.0.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
    ]


@pytest.mark.parametrize(
    "name,widths,factor",
    [("gpt2-xl", ("n_embd",), 16), ("llama-3-8b-2layers", ("hidden_size", "intermediate_size"), 64)],
)
def test_narrowed_copies_keep_depth_heads_and_preset(name, widths, factor, device):
    shared = load_shared_model(f"test-shape-{name}", device=device)
    full, _ = shape_config(f"shape:{name}")
    narrow = shared.model.config
    assert narrow.num_hidden_layers == full.num_hidden_layers
    assert narrow.num_attention_heads == full.num_attention_heads
    assert all(getattr(narrow, w) == getattr(full, w) // factor for w in widths)
    assert shared.preset == SHAPE_MODELS[f"shape:{name}"].preset()


def test_shaped_gpt2_xl_runs_an_episode_through_gym_make(make_env, helpers):
    env = make_env("test-shape-gpt2-xl", num_edits=2)
    unwrapped = env.unwrapped
    assert unwrapped.candidate_modules == GPT2_XL_C_PROJ
    assert unwrapped.module_dims() == [(400, 100)] * 5
    env.reset(seed=0)
    base = helpers.snapshot(env)
    observation, reward, _, _, info = env.step(helpers.full_action(env))
    assert env.observation_space.contains(observation) and np.isfinite(reward)
    assert all(not torch.equal(a, b) for a, b in zip(base, helpers.snapshot(env)))
    env.reset(seed=0)
    assert helpers.same_weights(helpers.snapshot(env), base)


@pytest.mark.parametrize("name", ["hiedit", "rledit"])
def test_learned_editors_train_and_act_on_the_shaped_gpt2_xl(name, make_env, helpers):
    """The Conv1D low-rank path at GPT-2 XL's depth: a training step, then an act whose update lands in
    the transposed weights exactly as ``U^T V`` in Linear orientation."""
    cls = agent_class(name)
    env = make_env("test-shape-gpt2-xl", num_edits=2, **cls.env_requirements({}))
    agent = cls(env, validation_edits=0)
    stats = agent.learn(env, 2, progress=False)
    assert stats["optimizer_steps"] == 2
    observation, info = env.reset(seed=1)
    action = agent.act(observation, info)
    before = helpers.snapshot(env)
    env.step(action)
    after = helpers.snapshot(env)
    chosen = [i for i, u in enumerate(action["update"]) if u is not None]
    assert chosen
    for i in chosen:
        u, v = action["update"][i]
        torch.testing.assert_close(after[i] - before[i], u.T.float() @ v.float(), rtol=1e-3, atol=1e-6)


def test_bfloat16_weights_run_the_step_objective_trace_and_agents(make_env):
    cls = agent_class("hiedit")
    env = make_env("test-tiny-gpt2", num_edits=3, dtype="bfloat16", **cls.env_requirements({}))
    unwrapped = env.unwrapped
    assert unwrapped.model.dtype == torch.bfloat16
    agent = cls(env, validation_edits=0)
    stats = agent.learn(env, 3, progress=False)  # objective with gradients, objective trace, steps
    assert np.isfinite(stats["final_running"]["loss"])
    assert all(w.dtype == torch.bfloat16 for w in unwrapped.candidate_weights())
    observation, info = env.reset(seed=0)
    updates = [
        (torch.zeros(1, d_out, requires_grad=True), torch.randn(1, d_in)) for d_in, d_out in unwrapped.module_dims()
    ]
    terms = unwrapped.objective(updates)
    terms.total.backward()
    assert all(u.grad is not None and torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0 for u, _ in updates)
    _, reward, _, _, info = env.step(agent.act(observation, info))
    assert np.isfinite(reward) and info["applied_ratio"] > 0.5


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_steps_that_round_away_are_measured_and_reported(dtype, make_env, helpers):
    """A relative step of 1e-6 is far below bfloat16's precision: the weights do not move, and the
    ``changed`` observation and ``applied_ratio`` say so instead of echoing the request."""
    env = make_env("test-tiny-gpt2", dtype=dtype, eta_range=(1e-6, 1e-6))
    env.reset(seed=0)
    base = helpers.snapshot(env)
    if dtype == "bfloat16":
        with pytest.warns(UserWarning, match="round away"):
            observation, _, _, _, info = env.step(helpers.full_action(env))
    else:
        observation, _, _, _, info = env.step(helpers.full_action(env))
    changed = observation["layers"][:, LAYER_FEATURES.index("changed")]
    real = np.array(
        [float((w.float() - b.float()).norm() / b.float().norm()) for w, b in zip(helpers.snapshot(env), base)]
    )
    np.testing.assert_allclose(changed, real, rtol=0.02, atol=1e-9)
    if dtype == "float32":
        assert info["applied_ratio"] == 1.0
        np.testing.assert_allclose(changed, 1e-6, rtol=0.02)
    else:
        assert info["applied_ratio"] < 0.5 and changed.max() < 0.5e-6


def test_cuda_asked_for_without_cuda_is_one_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
        gym.make("HiEdit-v0", model="test-tiny-gpt2", dataset="default", device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        gym.make("HiEdit-v0", model="test-tiny-gpt2", dataset="default", device="gpu")
    assert main(["speed", "--model", "test-tiny-gpt2", "--device", "cuda"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hiedit speed: error: device='cuda' but CUDA is not available") and "\n" not in error


def test_speed_reports_step_reset_memory_and_the_preconditioners(device, tmp_path, capsys):
    out = tmp_path / "llama.json"
    assert (
        main(
            [
                "speed",
                "--model",
                "test-shape-llama-3-8b-2layers",
                "--dataset",
                "default",
                "--num-edits",
                "3",
                "--editors",
                "full",
                "diagonal",
                "--editor-warmup",
                "1",
                "--device",
                device,
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    run = json.loads(out.read_text())
    assert run["edits_timed"] == 2 and run["candidates"] == 2 and run["dtype"] == "float32"
    assert run["ratio"] == pytest.approx(run["median_step_s"] / run["median_floor_s"])
    assert run["reset_s"] > 0 and run["first_reset_s"] > 0
    assert run["peak_rss_gb"] >= run["peak_rss_gb_steps"] > 0
    full, diagonal = run["editors"]
    assert (full["preconditioner"], diagonal["preconditioner"]) == ("full", "diagonal")
    assert full["full_matrix_bytes_per_module"] == [4 * 64 * 64] * 2  # gate_proj and up_proj read 64 features
    # Each module holds its moment and its inverse (float32) and a float64 count.
    assert full["preconditioner_bytes"] == 2 * (2 * 4 * 64 * 64 + 8)
    assert diagonal["preconditioner_bytes"] == 0
    assert full["median_act_s"] > 0 and full["ratio"] > 0

    (tmp_path / "other.json").write_text(json.dumps({"not": "a run"}))
    # a run of an earlier version, which recorded neither a label nor the device, dtype, reset or peak while stepping
    earlier = {"model": "m", "agent": "ft_l", "candidates": 18, "threads": 1, "median_step_s": 5.6}
    (tmp_path / "earlier.json").write_text(
        json.dumps({**earlier, "median_floor_s": 0.8, "ratio": 7.0, "peak_rss_gb": 1.4})
    )
    capsys.readouterr()
    assert main(["speed", "--table", str(tmp_path)]) == 0
    rows = (tmp_path / "speed.md").read_text().splitlines()
    assert rows[0].startswith("| run | agent |") and len(rows) == 4
    assert rows[2] == "| earlier | ft_l | - | - | 1 | 18 | 5.600 | 0.800 | **7.00x** | - | 1.40 | - | - | - |"
    # a column per preconditioner form the run timed (full, diagonal), and no more in any row
    assert rows[0].count("| editor, ") == 2 and all(row.count("|") == rows[0].count("|") for row in rows)
    assert rows[3].startswith(f"| test-shape-llama-3-8b-2layers | constant action | {run['device_name']} | float32 |")
    assert main(["speed", "--table", str(tmp_path / "missing")]) == 2
    (tmp_path / "broken.json").write_text('{"median_floor_s": ')
    capsys.readouterr()
    assert main(["speed", "--table", str(tmp_path)]) == 2
    assert "broken.json' is not valid JSON" in capsys.readouterr().err


def test_gpu_script_runs_the_table_on_the_cpu_with_tiny_models(tmp_path):
    runs = (
        "tiny-llama test-tiny-llama float32 {}\n"
        'tiny-llama-down_proj test-shape-llama-3-8b-2layers bfloat16 {"modules": ["model.layers.1.mlp.down_proj"]}'
    )
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "HIEDIT_DEVICE": "cpu",
        "HIEDIT_SPEED_EDITS": "2",
        "HIEDIT_SPEED_DATASET": "default",
        "HIEDIT_SPEED_RUNS": runs,
        "HIEDIT_SPEED_LIMIT": "400",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    llama = json.loads((tmp_path / "tiny-llama-down_proj.json").read_text())
    assert llama["dtype"] == "bfloat16" and llama["modules"] == ["model.layers.1.mlp.down_proj"]
    assert llama["editors"][0]["full_matrix_bytes_per_module"] == [4 * 224 * 224]
    table = (tmp_path / "speed.md").read_text()
    assert "| tiny-llama | constant action | cpu | float32 |" in table
    assert "| tiny-llama-down_proj | constant action | cpu | bfloat16 |" in table
    assert "torch" in (tmp_path / "device.txt").read_text()
