"""The benchmark tools run end to end on a tiny model and write what they promise."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")


def test_untrained_editor_statistics_come_from_unedited_training_edits() -> None:
    import gymnasium as gym
    import torch
    from hiedit_agents import RLEditAgent

    env = gym.make(
        "HiEdit-v0",
        model="test-tiny-llama",
        dataset="default",
        split="train",
        num_edits=20,
        update_mode="low_rank",
        evaluate_generation=False,
    )
    agent = RLEditAgent(env)
    env.reset(seed=0)  # the model is shared between environments: this one's weights are in it after a reset
    before = [p.detach().clone() for p in env.unwrapped.model.parameters()]
    agent.observe_unedited(env, 25)  # one full episode of 20 and 5 of the next
    assert int(agent.editor.gradient_size.count) == 25
    assert all(torch.equal(a, b) for a, b in zip(before, env.unwrapped.model.parameters()))


def test_evaluate_and_speed_build_the_environment_a_checkpoint_needs(tmp_path: Path) -> None:
    """A MaskablePPO selector over a trained RLEdit editor needs a low_rank environment, which only its
    saved configuration says (the class alone would give step_size)."""
    from hiedit_agents.cli import main

    common = ["--model", "test-tiny-llama", "--dataset", "default", "--num-edits", "3", "--threads", "1"]
    assert (
        main(
            [
                "train",
                "--agent",
                "rledit",
                *common,
                "--steps",
                "2",
                "--agent-kwargs",
                '{"validation_edits": 0}',
                "--out",
                str(tmp_path / "rledit"),
            ]
        )
        == 0
    )
    wrappers = [
        {
            "hiedit_env.wrappers:ChooseLayersInTurn": {
                "editor": {"agent": "rledit", "checkpoint": str(tmp_path / "rledit")}
            }
        }
    ]
    kwargs = {"env_wrapper": wrappers, "n_steps": 8, "batch_size": 8, "eval_freq": 0}
    checkpoints = tmp_path / "checkpoints"
    assert (
        main(
            [
                "train",
                "--agent",
                "maskable_ppo",
                *common,
                "--steps",
                "8",
                "--agent-kwargs",
                json.dumps(kwargs),
                "--out",
                str(checkpoints / "maskable_ppo"),
            ]
        )
        == 0
    )
    evaluated = tmp_path / "evaluate.json"
    assert (
        main(
            [
                "evaluate",
                "--agent",
                "maskable_ppo",
                "--checkpoint",
                str(checkpoints / "maskable_ppo"),
                *common,
                "--out",
                str(evaluated),
            ]
        )
        == 0
    )
    assert json.loads(evaluated.read_text())["layers_per_edit"] == 2
    speed = tmp_path / "speed.json"
    assert (
        main(
            [
                "speed",
                "--model",
                "test-tiny-llama",
                "--dataset",
                "default",
                "--num-edits",
                "3",
                "--agent",
                "maskable_ppo",
                "--checkpoint",
                str(checkpoints / "maskable_ppo"),
                "--out",
                str(speed),
            ]
        )
        == 0
    )
    assert json.loads(speed.read_text())["agent"] == "maskable_ppo"


def test_seeds_table_averages_the_agents_every_folder_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for seed, (hiedit, rledit) in enumerate([(0.5, 0.4), (0.7, 0.6)]):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        for name, mean in (("hiedit", hiedit), ("rledit", rledit)):
            (folder / f"{name}.json").write_text(json.dumps({"ES": mean, "GS": mean, "LS": 1.0, "mean": mean}))
        (folder / "config.json").write_text(json.dumps({"not": "a result"}))
    (tmp_path / "seed0" / "noop.json").write_text(json.dumps({"ES": 0.1, "GS": 0.1, "LS": 1.0, "mean": 0.4}))
    out = tmp_path / "seeds.md"
    run_script("seeds_table.py", [str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--out", str(out)], monkeypatch)
    rows = out.read_text().splitlines()
    assert rows[0] == "| agent (n=2 episodes) | ES | GS | LS | mean |"
    assert rows[2:] == [
        "| hiedit | 0.600 (0.141) | 0.600 (0.141) | 1.000 (0.000) | 0.600 (0.141) |",
        "| rledit | 0.500 (0.141) | 0.500 (0.141) | 1.000 (0.000) | 0.500 (0.141) |",
    ]  # noop: one folder only
    with pytest.raises(SystemExit, match="not a folder"):
        run_script("seeds_table.py", [str(tmp_path / "nope")], monkeypatch)


def test_seeds_table_rows_from_patterns_count_files_and_keep_the_lowest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, mean in (("hiedit_train_seed0", 0.5), ("hiedit_train_seed1", 0.7), ("rledit_train_seed0", 0.2)):
        (tmp_path / f"{name}.json").write_text(
            json.dumps({"ES": mean, "GS": mean, "LS": 1.0, "mean": mean, "layers_per_edit": 9.0})
        )
    (tmp_path / "stats.json").write_text(json.dumps({"not": "a result"}))
    out = tmp_path / "rows.md"
    run_script(
        "seeds_table.py",
        [
            "--rows",
            f"hiedit={tmp_path}/hiedit_*.json,{tmp_path}/stats.json",
            f"rledit={tmp_path}/rledit_*.json",
            "--out",
            str(out),
        ],
        monkeypatch,
    )
    rows = out.read_text().splitlines()
    assert rows[0] == "| agent | n | lowest mean | layers_per_edit | ES | GS | LS | mean |"
    assert rows[2] == "| hiedit | 2 | 0.500 | 9.0 | 0.600 (0.141) | 0.600 (0.141) | 1.000 (0.000) | 0.600 (0.141) |"
    assert rows[3] == "| rledit | 1 | 0.200 | 9.0 | 0.200 (0.000) | 0.200 (0.000) | 1.000 (0.000) | 0.200 (0.000) |"
    with pytest.raises(SystemExit, match="no result file matches"):
        run_script("seeds_table.py", ["--rows", f"x={tmp_path}/nothing_*.json"], monkeypatch)
    with pytest.raises(SystemExit, match="NAME=GLOB"):
        run_script("seeds_table.py", ["--rows", "no-equals-sign"], monkeypatch)


def test_module_costs_measures_every_candidate_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "costs.json"
    # The tiny GPT-2: its modules' steps move the unrelated prompts' answers by a KL of about 2e-7 each on
    # the shipped set, well above float32 rounding (the tiny Llama's, about 1e-8, are not).
    run_script(
        "module_costs.py",
        [
            "--model",
            "test-tiny-gpt2",
            "--dataset",
            "default",
            "--num-edits",
            "2",
            "--unrelated",
            "3",
            "--observe-edits",
            "4",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        monkeypatch,
    )
    result = json.loads(out.read_text())
    assert len(result["per_edit"]) == 2 and result["unrelated"] == 3
    assert len(result["mean"]) == len(result["modules"]) == 4
    for module in result["mean"]:
        assert module["unrelated_kl"] > 0  # a module's update alone moves the unrelated prompts' answers
        assert module["edit_ce_drop"] > 0  # an untrained editor's step is a descent step on the edit


def test_key_statistics_script_compares_sampled_text_with_the_data_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hiedit_agents.locate import stats

    monkeypatch.setattr(stats, "DEFAULT_CACHE", tmp_path / "key_stats")
    out = tmp_path / "key_statistics.json"
    run_script(
        "key_statistics.py",
        [
            "--model",
            "test-tiny-llama",
            "--dataset",
            "default",
            "--records",
            "40",
            "--top",
            "8",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        monkeypatch,
    )
    result = json.loads(out.read_text())
    assert list(result["modules"]) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert result["prompts"] == 3 * 40  # the first 40 of the 48 training records, three prompts each
    for figures in result["modules"].values():
        assert figures["relative_frobenius"] > 0 and 0 < figures["top_subspace_overlap"] <= 1
        assert figures["random_overlap"] == 8 / 128


def test_preconditioner_selection_spec_trains_both_forms_and_scores_only_the_training_split(
    benchmark_data_stand_ins: set[str],
) -> None:
    from hiedit_agents.sweep.grid import expand
    from hiedit_agents.sweep.spec import load_spec

    spec = load_spec(BENCHMARKS / "specs" / "preconditioner-selection.yaml")
    cells = expand(spec)
    assert all(c.eval_split == "train" and c.evaluations == [(1000, 100), (1001, 100), (1002, 100)] for c in cells)
    trained = {c.id for c in cells if c.training_seed is not None}
    assert {
        f"smollm2-135m__zsre__{name}__train{seed}"
        for seed in (0, 100)
        for name in ("hiedit-full", "hiedit-diagonal", "rledit-full+rledit-full-bounded", "rledit-diagonal")
    } <= trained
    bounded = next(c for c in cells if c.id == "smollm2-135m__zsre__rledit-full+rledit-full-bounded__train0")
    assert bounded.agent_kwargs == {"preconditioner": "full"}
    assert bounded.variants == [("rledit-full", {}), ("rledit-full-bounded", {"max_size_ratio": 3})]
