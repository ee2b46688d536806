"""The benchmark scripts run end to end on a tiny model and write what they promise."""

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


def test_speed_script_reports_ratio_against_floor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "speed.json"
    run_script("speed.py", ["--model", "test-tiny-gpt2", "--dataset", "default", "--num-edits", "4", "--out", str(out)],
               monkeypatch)
    figures = json.loads(out.read_text())
    assert figures["edits_timed"] == 3
    assert figures["median_floor_s"] > 0 and figures["median_step_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["median_step_s"] / figures["median_floor_s"])


def test_packing_script_times_both_layouts_and_leaves_the_check_to_run_again(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from hiedit_env import tokens
    from hiedit_env.models import load_shared_model

    out = tmp_path / "packing.json"
    run_script("packing.py", ["--model", "test-tiny-llama", "--dataset", "default", "--back-depths", "0", "2",
                              "--edits", "2", "--out", str(out)], monkeypatch)
    rows = json.loads(out.read_text())["rows"]
    assert [r["back_depth"] for r in rows] == [0, 2] and [r["prompts"] for r in rows] == [2, 4]
    for row in rows:
        assert row["tokens_padded"] >= row["tokens"] > 0
        assert row["median_packed_trace_s"] > 0 and row["median_padded_train_s"] > 0
    assert load_shared_model("test-tiny-llama").model not in tokens._PACKING


def test_agent_sweep_writes_table_curves_and_results(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run_script("agents.py", ["--model", "test-tiny-llama", "--dataset", "default", "--agents", "noop,topk_grad",
                             "--num-edits", "4", "--tune-edits", "5", "--out", str(tmp_path)], monkeypatch)
    noop = json.loads((tmp_path / "noop.json").read_text())
    assert noop["layers_per_edit"] == 0.0 and noop["LS"] == 1.0
    assert [p["edits"] for p in noop["curve"]] == [1, 2, 3, 4]
    assert noop["agent_seconds_per_edit"] >= 0.0
    topk = json.loads((tmp_path / "topk_grad.json").read_text())
    assert topk["tuning"]["step"] in (-1.0, -0.5, 0.0, 0.5, 1.0)
    assert "| noop |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 0
    again = tmp_path / "again"
    run_script("agents.py", ["--model", "test-tiny-llama", "--dataset", "default", "--agents", "noop",
                             "--num-edits", "4", "--out", str(again),
                             "--include", f"earlier_topk={tmp_path / 'topk_grad.json'}"], monkeypatch)
    assert "| earlier_topk |" in (again / "table.md").read_text() and not (again / "earlier_topk.json").exists()
    with pytest.raises(SystemExit):
        run_script("agents.py", ["--dataset", "default", "--out", str(again),
                                 "--include", f"table={tmp_path / 'table.md'}"], monkeypatch)


def test_untrained_editor_statistics_come_from_unedited_training_edits() -> None:
    import gymnasium as gym
    import torch

    from hiedit_agents import RLEditAgent

    env = gym.make("HiEdit-v0", model="test-tiny-llama", dataset="default", split="train", num_edits=20,
                   update_mode="low_rank", evaluate_generation=False)
    agent = RLEditAgent(env)
    env.reset(seed=0)  # the model is shared between environments: this one's weights are in it after a reset
    before = [p.detach().clone() for p in env.unwrapped.model.parameters()]
    agent.observe_unedited(env, 25)  # one full episode of 20 and 5 of the next
    assert int(agent.editor.gradient_size.count) == 25
    assert all(torch.equal(a, b) for a, b in zip(before, env.unwrapped.model.parameters()))


def test_benchmarks_build_the_environment_a_checkpoint_needs(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A MaskablePPO selector over a trained RLEdit editor needs a low_rank environment, which only its
    saved configuration says (the class alone would give step_size)."""
    from hiedit_agents.cli import main

    common = ["--model", "test-tiny-llama", "--dataset", "default", "--num-edits", "3", "--threads", "1"]
    assert main(["train", "--agent", "rledit", *common, "--steps", "2", "--agent-kwargs", '{"validation_edits": 0}',
                 "--out", str(tmp_path / "rledit")]) == 0
    wrappers = [{"hiedit_env.wrappers:ChooseLayersInTurn": {"editor": {"agent": "rledit", "checkpoint": str(tmp_path / "rledit")}}}]
    kwargs = {"env_wrapper": wrappers, "n_steps": 8, "batch_size": 8, "eval_freq": 0}
    checkpoints = tmp_path / "checkpoints"
    assert main(["train", "--agent", "maskable_ppo", *common, "--steps", "8", "--agent-kwargs", json.dumps(kwargs),
                 "--out", str(checkpoints / "maskable_ppo")]) == 0
    out = tmp_path / "sweep"
    run_script("agents.py", ["--model", "test-tiny-llama", "--dataset", "default", "--agents", "maskable_ppo",
                             "--checkpoints", str(checkpoints), "--num-edits", "3", "--out", str(out)], monkeypatch)
    assert json.loads((out / "maskable_ppo.json").read_text())["layers_per_edit"] == 2
    speed = tmp_path / "speed.json"
    run_script("speed.py", ["--model", "test-tiny-llama", "--dataset", "default", "--num-edits", "3", "--agent", "maskable_ppo",
                            "--checkpoint", str(checkpoints / "maskable_ppo"), "--out", str(speed)], monkeypatch)
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
    assert rows[2:] == ["| hiedit | 0.600 (0.141) | 0.600 (0.141) | 1.000 (0.000) | 0.600 (0.141) |",
                        "| rledit | 0.500 (0.141) | 0.500 (0.141) | 1.000 (0.000) | 0.500 (0.141) |"]  # noop: one folder only
    with pytest.raises(SystemExit, match="not a folder"):
        run_script("seeds_table.py", [str(tmp_path / "nope")], monkeypatch)


def test_seeds_table_rows_from_patterns_count_files_and_keep_the_lowest(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name, mean in (("hiedit_train_seed0", 0.5), ("hiedit_train_seed1", 0.7), ("rledit_train_seed0", 0.2)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"ES": mean, "GS": mean, "LS": 1.0, "mean": mean,
                                                           "layers_per_edit": 9.0}))
    (tmp_path / "stats.json").write_text(json.dumps({"not": "a result"}))
    out = tmp_path / "rows.md"
    run_script("seeds_table.py", ["--rows", f"hiedit={tmp_path}/hiedit_*.json,{tmp_path}/stats.json",
                                  f"rledit={tmp_path}/rledit_*.json", "--out", str(out)], monkeypatch)
    rows = out.read_text().splitlines()
    assert rows[0] == "| agent | n | lowest mean | layers_per_edit | ES | GS | LS | mean |"
    assert rows[2] == "| hiedit | 2 | 0.500 | 9.0 | 0.600 (0.141) | 0.600 (0.141) | 1.000 (0.000) | 0.600 (0.141) |"
    assert rows[3] == "| rledit | 1 | 0.200 | 9.0 | 0.200 (0.000) | 0.200 (0.000) | 1.000 (0.000) | 0.200 (0.000) |"
    with pytest.raises(SystemExit, match="no result file matches"):
        run_script("seeds_table.py", ["--rows", f"x={tmp_path}/nothing_*.json"], monkeypatch)
    with pytest.raises(SystemExit, match="NAME=GLOB"):
        run_script("seeds_table.py", ["--rows", "no-equals-sign"], monkeypatch)


def test_cells_table_reads_every_training_seed_and_episode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    old.mkdir()
    for seed, means in ((0, (0.5, 0.7)), (100, (0.3, 0.6))):
        for episode, mean in enumerate(means):
            (new / f"rledit_train_seed{seed}_episode{episode}.json").write_text(json.dumps({"mean": mean}))
            # The older name of episode 0 is read too.
            name = f"rledit_train_seed{seed}.json" if episode == 0 else f"rledit_train_seed{seed}_episode{episode}.json"
            (old / name).write_text(json.dumps({"mean": 0.4}))
    out = tmp_path / "cells.md"
    run_script("cells_table.py", [str(new), "--against", str(old), "--agents", "rledit", "--seeds", "0", "100",
                                  "--episodes", "0", "1", "--out", str(out)], monkeypatch)
    assert out.read_text().splitlines() == [
        "| training seed | rledit, episodes 0 / 1 |", "|---|---|",
        "| 0 | 0.500 (0.400) / 0.700 (0.400) |", "| 100 | 0.300 (0.400) / 0.600 (0.400) |",
        "| all 4 | 0.525 (sd 0.171), median 0.550, lowest 0.300; against 0.400, median 0.400, lowest 0.400; "
        "higher in 3 of 4 |"]
    with pytest.raises(SystemExit, match="no result for rledit, training seed 200, episode 0"):
        run_script("cells_table.py", [str(new), "--agents", "rledit", "--seeds", "200"], monkeypatch)


def test_update_alignment_of_an_untrained_editor_is_the_gradient_step(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import gymnasium as gym

    from hiedit_agents import make_agent
    from hiedit_agents.hypernet import DEFAULT_INIT_LR

    env = gym.make("HiEdit-v0", model="test-tiny-llama", dataset="default", num_edits=3, update_mode="low_rank",
                   evaluate_generation=False, trace="objective")
    # Zero up-projections and no key preconditioner: the update is -lr * G.
    make_agent("rledit", env, precondition=0).save(tmp_path / "untrained")
    out = tmp_path / "alignment.json"
    run_script("update_alignment.py", ["--checkpoint", str(tmp_path / "untrained"), "--model", "test-tiny-llama",
                                       "--dataset", "default", "--num-edits", "3", "--out", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    assert len(result["cosine_mean_per_edit"]) == len(result["locality_per_edit"]) == len(result["drift_max_per_edit"]) == 3
    # With no gradient-size statistics every untrained update is init_lr of its module's norm, so after the
    # first edit every module has drifted exactly that far, and later edits add to it.
    assert result["drift_max_per_edit"][0] == pytest.approx(DEFAULT_INIT_LR, rel=1e-3)
    assert result["drift_max_per_edit"][-1] > DEFAULT_INIT_LR
    monkeypatch.setattr(sys, "argv", ["update_alignment.py", "--table", str(out)])
    runpy.run_path(str(BENCHMARKS / "update_alignment.py"), run_name="__main__")
    row = capsys.readouterr().out.splitlines()[-1].split(" | ")
    assert row[0] == "| alignment" and row[4] == "1.00 / 1.00 / 1.00"
    assert result["cosine_mean"] == pytest.approx(1.0, abs=1e-4) and result["cosine_min"] == pytest.approx(1.0, abs=1e-4)


def test_module_costs_measures_every_candidate_alone(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "costs.json"
    # The tiny GPT-2: its modules' steps move the unrelated prompts' answers by a KL of about 2e-7 each on
    # the shipped set, well above float32 rounding (the tiny Llama's, about 1e-8, are not).
    run_script("module_costs.py", ["--model", "test-tiny-gpt2", "--dataset", "default", "--num-edits", "2",
                                   "--unrelated", "3", "--observe-edits", "4", "--threads", "1", "--out", str(out)],
               monkeypatch)
    result = json.loads(out.read_text())
    assert len(result["per_edit"]) == 2 and result["unrelated"] == 3
    assert len(result["mean"]) == len(result["modules"]) == 4
    for module in result["mean"]:
        assert module["unrelated_kl"] > 0  # a module's update alone moves the unrelated prompts' answers
        assert module["edit_ce_drop"] > 0  # an untrained editor's step is a descent step on the edit


def test_key_statistics_script_compares_sampled_text_with_the_data_prompts(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from hiedit_agents.locate import stats

    monkeypatch.setattr(stats, "DEFAULT_CACHE", tmp_path / "key_stats")
    out = tmp_path / "key_statistics.json"
    run_script("key_statistics.py", ["--model", "test-tiny-llama", "--dataset", "default", "--records", "40", "--top", "8",
                                     "--threads", "1", "--out", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    assert list(result["modules"]) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert result["prompts"] == 3 * 40  # the first 40 of the 48 training records, three prompts each
    for figures in result["modules"].values():
        assert figures["relative_frobenius"] > 0 and 0 < figures["top_subspace_overlap"] <= 1
        assert figures["random_overlap"] == 8 / 128
