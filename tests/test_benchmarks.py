"""The ``hiedit`` tools behind the benchmark results (``table``, ``curves``, ``module-costs``,
``key-statistics``, ``speed``) run end to end on a tiny model and write what they promise; the
benchmark specs expand as their headers say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


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


def hiedit(argv: list[str]) -> int:
    from hiedit_agents.cli import main

    return main(argv)


def test_table_averages_the_agents_every_folder_has(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed, (hiedit_mean, rledit_mean) in enumerate([(0.5, 0.4), (0.7, 0.6)]):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        for name, mean in (("hiedit", hiedit_mean), ("rledit", rledit_mean)):
            (folder / f"{name}.json").write_text(json.dumps({"ES": mean, "GS": mean, "LS": 1.0, "mean": mean}))
        (folder / "config.json").write_text(json.dumps({"not": "a result"}))
    (tmp_path / "seed0" / "noop.json").write_text(json.dumps({"ES": 0.1, "GS": 0.1, "LS": 1.0, "mean": 0.4}))
    out = tmp_path / "seeds.md"
    assert hiedit(["table", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--markdown", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "| agent (n=2 episodes) | ES | GS | LS | mean |"
    assert rows[2:] == [
        "| hiedit | 0.600 (0.141) | 0.600 (0.141) | 1.000 (0.000) | 0.600 (0.141) |",
        "| rledit | 0.500 (0.141) | 0.500 (0.141) | 1.000 (0.000) | 0.500 (0.141) |",
    ]  # noop: one folder only
    assert capsys.readouterr().out.splitlines() == rows
    assert hiedit(["table", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"hiedit table: error: not a folder: {tmp_path / 'nope'}"


def test_table_rows_from_patterns_count_files_and_keep_the_lowest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, mean in (("hiedit_train_seed0", 0.5), ("hiedit_train_seed1", 0.7), ("rledit_train_seed0", 0.2)):
        (tmp_path / f"{name}.json").write_text(
            json.dumps({"ES": mean, "GS": mean, "LS": 1.0, "mean": mean, "layers_per_edit": 9.0})
        )
    (tmp_path / "stats.json").write_text(json.dumps({"not": "a result"}))
    rows = [f"hiedit={tmp_path}/hiedit_*.json,{tmp_path}/stats.json", f"rledit={tmp_path}/rledit_*.json"]
    assert hiedit(["table", "--rows", *rows]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| agent | n | lowest mean | layers_per_edit | ES | GS | LS | mean |"
    assert lines[2] == "| hiedit | 2 | 0.500 | 9.0 | 0.600 (0.141) | 0.600 (0.141) | 1.000 (0.000) | 0.600 (0.141) |"
    assert lines[3] == "| rledit | 1 | 0.200 | 9.0 | 0.200 (0.000) | 0.200 (0.000) | 1.000 (0.000) | 0.200 (0.000) |"
    for argv, message in (
        (["--rows", f"x={tmp_path}/nothing_*.json"], "no result file matches"),
        (["--rows", "no-equals-sign"], "NAME=GLOB"),
        ([str(tmp_path), "--rows", f"x={tmp_path}/*.json"], "one of the two"),
        ([], "one of the two"),
    ):
        assert hiedit(["table", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_curves_draw_validation_and_tensorboard_curves_of_training_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from torch.utils.tensorboard import SummaryWriter

    validations = [{"after_edits": n, "mean": 0.5 + n / 1000, "ES": 0.6, "GS": 0.4} for n in (0, 20, 40)]
    stats = {"agent": "hiedit", "seed": 0, "validations": validations, "kept_after_edits": 40}
    stats["kept_validation_mean"] = 0.54
    validated = tmp_path / "hiedit_seed0.json"
    validated.write_text(json.dumps(stats))
    run = tmp_path / "sac"
    writer = SummaryWriter(str(run / "tensorboard" / "SAC_1"))
    for step in range(5):
        writer.add_scalar("edit/edit_success", step / 5, step)
        writer.add_scalar("not/drawn", 1.0, step)
    writer.close()
    (run / "train_stats.json").write_text(json.dumps({"agent": "sac", "steps": 5}))  # no validations
    out = tmp_path / "curves"
    assert hiedit(["curves", str(validated), f"SAC={run}", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["learning_curves.png", "validation_curves.png"]
    assert all(
        (out / name).read_bytes().startswith(b"\x89PNG") for name in ("learning_curves.png", "validation_curves.png")
    )
    assert "validation_curves.png" in capsys.readouterr().out
    # Nothing to draw, or a path that is not there: one line each, nothing written.
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, message in (([str(empty)], "nothing to draw"), ([str(tmp_path / "missing")], "does not exist")):
        assert hiedit(["curves", *argv, "--out", str(tmp_path / "none")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()


def test_module_costs_measures_every_candidate_alone(tmp_path: Path) -> None:
    out = tmp_path / "costs.json"
    # The tiny GPT-2: its modules' steps move the unrelated prompts' answers by a KL of about 2e-7 each on
    # the shipped set, well above float32 rounding (the tiny Llama's, about 1e-8, are not).
    argv = ["module-costs", "--model", "test-tiny-gpt2", "--dataset", "default", "--num-edits", "2"]
    argv += ["--unrelated", "3", "--observe-edits", "4", "--threads", "1", "--out", str(out)]
    assert hiedit(argv) == 0
    result = json.loads(out.read_text())
    assert len(result["per_edit"]) == 2 and result["unrelated"] == 3
    assert len(result["mean"]) == len(result["modules"]) == 4
    for module in result["mean"]:
        assert module["unrelated_kl"] > 0  # a module's update alone moves the unrelated prompts' answers
        assert module["edit_ce_drop"] > 0  # an untrained editor's step is a descent step on the edit


def test_key_statistics_compares_sampled_text_with_the_data_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hiedit_agents.locate import stats

    monkeypatch.setattr(stats, "DEFAULT_CACHE", tmp_path / "key_stats")
    out = tmp_path / "key_statistics.json"
    argv = ["key-statistics", "--model", "test-tiny-llama", "--dataset", "default", "--records", "40"]
    assert hiedit([*argv, "--top", "8", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["modules"]) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert result["prompts"] == 3 * 40  # the first 40 of the 48 training records, three prompts each
    for figures in result["modules"].values():
        assert figures["relative_frobenius"] > 0 and 0 < figures["top_subspace_overlap"] <= 1
        assert figures["random_overlap"] == 8 / 128
    assert len(list((tmp_path / "key_stats").iterdir())) == 2  # the sampled C, cached for the agents


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
