"""The shipped hyperparameter files in RL Baselines3 Zoo as they are (its ``rl_zoo3.train`` entry point,
training and ``--optimize``, on a tiny model), and ``hiedit train``'s reading of both wrapper spellings.

The zoo's entry point runs in this process (``sys.argv`` set, as ``python -m rl_zoo3.train`` would
set it): a fresh interpreter per run would spend most of the test's time importing torch and the zoo.
"""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
import yaml
from gymnasium import spaces
from hiedit_agents.cli import main
from hiedit_agents.sb3 import HYPERPARAMS_DIR, SB3_AGENTS, load_hyperparams, wrap_levels
from rl_zoo3.train import train as zoo_train
from rl_zoo3.utils import ALGOS
from stable_baselines3 import PPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hiedit_env.wrappers import ChooseLayers

MODEL = "test-tiny-llama"  # 4 candidate modules
# The zoo replaces the file's env_kwargs by --env-kwargs as a whole, and builds its evaluation
# environment from --eval-env-kwargs alone: both name the model (docs/rl-zoo.md).
ENV_KWARGS = [f"model:'{MODEL}'", "num_edits:2", "evaluate_generation:False"]
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*Box (observation|action) space (minimum|maximum) value"),
    pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version"),
]

# Rollouts and warm-up shortened on the command line (the files stay as shipped) so 16 steps train.
ZOO_ALGOS = {
    "a2c": ["n_steps:8"],
    "ppo": ["n_steps:8", "batch_size:8"],
    "sac": ["learning_starts:8"],
    "td3": ["learning_starts:8"],
}
ACTION_SPACES = {
    "a2c": spaces.MultiBinary(4),
    "ppo": spaces.MultiBinary(4),
    "sac": spaces.Box(-1, 1, (4,), np.float32),
    "td3": spaces.Box(-1, 1, (8,), np.float32),
}


def _zoo(monkeypatch: pytest.MonkeyPatch, algo: str, log_folder, *options: str) -> None:
    """``python -m rl_zoo3.train`` on the shipped ``<algo>.yml``, the tiny model, training split;
    evaluation on the test split."""
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "rl_zoo3.train",
            "--algo",
            algo,
            "--env",
            "HiEdit-v0",
            "--gym-packages",
            "hiedit_env",
            "--conf-file",
            str(HYPERPARAMS_DIR / f"{algo}.yml"),
            "--seed",
            "0",
            "--num-threads",
            "1",
            "--verbose",
            "0",
            "--log-folder",
            str(log_folder),
            "--env-kwargs",
            *ENV_KWARGS,
            "split:'train'",
            "--eval-env-kwargs",
            *ENV_KWARGS,
            "split:'test'",
            *options,
        ],
    )
    zoo_train()


def test_shipped_files_name_only_algorithms_the_zoo_has_besides_maskable_ppo():
    # The files in the zoo's format (an entry per environment id); locate.yml holds other agents' presets.
    shipped = sorted(
        path.stem for path in HYPERPARAMS_DIR.glob("*.yml") if "HiEdit-v0" in yaml.safe_load(path.read_text())
    )
    assert shipped == sorted([*ZOO_ALGOS, "maskable_ppo"]) and "maskable_ppo" not in ALGOS
    assert set(ZOO_ALGOS) <= set(ALGOS)


@pytest.mark.parametrize("algo", sorted(ZOO_ALGOS))
def test_zoo_trains_each_shipped_file(algo, monkeypatch, tmp_path):
    # Our reward-term callback through the zoo's own `callback` key, into the zoo's TensorBoard log.
    _zoo(
        monkeypatch,
        algo,
        tmp_path,
        "-n",
        "16",
        "--eval-freq",
        "8",
        "--eval-episodes",
        "1",
        "--log-interval",
        "1",
        "-tb",
        str(tmp_path / "tb"),
        "--hyperparams",
        *ZOO_ALGOS[algo],
        "callback:'hiedit_agents.sb3.callbacks.RewardTermsCallback'",
    )
    run = tmp_path / algo / "HiEdit-v0_1"
    model = ALGOS[algo].load(run / "HiEdit-v0.zip", device="cpu")
    assert model.num_timesteps >= 16
    assert model.action_space == ACTION_SPACES[algo]  # the level wrapper the file names, on 4 candidates
    # The zoo evaluated on its own evaluation environment (the test split, the same tiny model).
    assert np.load(run / "evaluations.npz")["results"].shape[0] >= 1
    tags = EventAccumulator(str(next((tmp_path / "tb" / "HiEdit-v0").iterdir()))).Reload().Tags()["scalars"]
    assert {"edit/edit_success", "edit/locality", "episode/mean"} <= set(tags)
    # The hyperparameters the zoo used (an OrderedDict dump, read the way the zoo's enjoy.py reads it).
    saved = dict(yaml.load((run / "HiEdit-v0" / "config.yml").read_text(), Loader=yaml.UnsafeLoader))
    assert next(iter(saved["env_wrapper"][0])).startswith("hiedit_env.wrappers.") and "level" not in saved


def test_zoo_trains_a_layer_selector_over_a_trained_rledit_editor(rledit_checkpoint, monkeypatch, tmp_path):
    editor = rledit_checkpoint
    # A user's file: the zoo passes the wrapper's arguments from YAML as they are, the wrapper loads the agent.
    conf = tmp_path / "ppo_over_rledit.yml"
    conf.write_text(
        yaml.safe_dump(
            {
                "HiEdit-v0": {
                    "env_wrapper": [
                        {"hiedit_env.wrappers.ChooseLayers": {"editor": {"agent": "rledit", "checkpoint": str(editor)}}}
                    ],
                    "policy": "MultiInputPolicy",
                    "n_timesteps": 8,
                    "n_steps": 8,
                    "batch_size": 8,
                }
            }
        )
    )
    low_rank = ["update_mode:'low_rank'"]
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "rl_zoo3.train",
            "--algo",
            "ppo",
            "--env",
            "HiEdit-v0",
            "--gym-packages",
            "hiedit_env",
            "--conf-file",
            str(conf),
            "--seed",
            "0",
            "--num-threads",
            "1",
            "--verbose",
            "0",
            "--log-folder",
            str(tmp_path / "logs"),
            "--env-kwargs",
            *ENV_KWARGS,
            *low_rank,
            "--eval-env-kwargs",
            *ENV_KWARGS,
            *low_rank,
        ],
    )
    zoo_train()
    assert PPO.load(tmp_path / "logs" / "ppo" / "HiEdit-v0_1" / "HiEdit-v0.zip", device="cpu").num_timesteps == 8


def test_zoo_optimize_runs_two_trials(monkeypatch, tmp_path):
    _zoo(
        monkeypatch,
        "sac",
        tmp_path,
        "--optimize",
        "--n-trials",
        "2",
        "--n-jobs",
        "1",
        "--sampler",
        "random",
        "-n",
        "12",
        "--n-evaluations",
        "1",
        "--eval-episodes",
        "1",
        "--no-optim-plots",
        "--hyperparams",
        "learning_starts:4",
    )
    (report,) = (tmp_path / "sac").glob("report_HiEdit-v0_2-trials-12-random-*.csv")
    trials = list(csv.DictReader(report.open()))
    assert [trial["state"] for trial in trials] == ["COMPLETE", "COMPLETE"]
    assert all(np.isfinite(float(trial["value"])) for trial in trials)


@pytest.mark.parametrize("separator", [".", ":"])
def test_hiedit_train_reads_both_wrapper_spellings(separator, make_env, tmp_path):
    path = tmp_path / "ppo.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "HiEdit-v0": {
                    "policy": "MlpPolicy",
                    "n_timesteps": 10,
                    "env_wrapper": [
                        {f"hiedit_env.wrappers{separator}ChooseLayers": {"editor": -0.5}},
                        f"gymnasium.wrappers{separator}FlattenObservation",
                    ],
                },
                "hiedit_train": {"level": "high", "eval_freq": 0},
            }
        )
    )
    hp = load_hyperparams("ppo", path)
    assert hp["level"] == "high" and hp["eval_freq"] == 0
    level, (flatten,) = wrap_levels(hp, make_env(MODEL).unwrapped)
    assert isinstance(level, ChooseLayers) and type(flatten).__name__ == "FlattenObservation"
    assert level.editor({}, {}).tolist() == [-0.5] * 4


def test_shipped_files_keep_the_keys_of_hiedit_train_out_of_the_zoo_entry():
    for cls in SB3_AGENTS:
        table = yaml.safe_load((HYPERPARAMS_DIR / f"{cls.name}.yml").read_text())
        assert set(table) == {"HiEdit-v0", "hiedit_train"}
        assert {"level", "vec_env", "eval_freq", "checkpoint_freq"} <= set(table["hiedit_train"])
        assert not {"level", "vec_env", "eval_freq", "checkpoint_freq"} & set(table["HiEdit-v0"])


def test_bad_hiedit_train_sections_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        yaml.safe_dump(
            {"HiEdit-v0": {"env_wrapper": ["hiedit_env.wrappers.ChooseLayers"]}, "hiedit_train": {"learning_rate": 0.1}}
        )
    )
    with pytest.raises(ValueError, match=r"'hiedit_train' section may only hold .*got \['learning_rate'\]"):
        load_hyperparams("ppo", bad)
    bad.write_text(
        yaml.safe_dump(
            {
                "HiEdit-v0": {"eval_freq": 5, "env_wrapper": ["hiedit_env.wrappers.ChooseLayers"]},
                "hiedit_train": {"eval_freq": 10},
            }
        )
    )
    with pytest.raises(ValueError, match=r"sets \['eval_freq'\] both in 'HiEdit-v0' and in 'hiedit_train'"):
        load_hyperparams("ppo", bad)
    args = [
        "train",
        "--agent",
        "ppo",
        "--model",
        MODEL,
        "--dataset",
        "default",
        "--num-edits",
        "2",
        "--steps",
        "4",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "out"),
        "--agent-kwargs",
    ]
    assert main([*args, '{"env_wrapper": ["hiedit_env.wrappers.NoSuchWrapper"]}']) == 2
    assert "cannot import 'hiedit_env.wrappers.NoSuchWrapper'" in capsys.readouterr().err
