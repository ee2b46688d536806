"""Bad input, one test per kind: the ``hiedit`` command answers with one line naming the problem and
exit code 2 (never a traceback), and leaves every file on disk as it was.

Each case runs the real command in this process on a tiny model; :func:`refused` checks the exit
code, the one-line message, the absence of a traceback and that the folder's files are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hiedit_agents.cli import main

MODEL = "test-tiny-llama"
RECORD = {
    "subject": "UniFirst",
    "src": "What is the product made by UniFirst?",
    "pred": "uniform",
    "rephrase": "What will be the product of UniFirst?",
    "alt": "unmanned aircraft",
    "answers": ["uniform"],
    "loc": "nq question: who played the dude",
    "loc_ans": "Jeff Bridges",
}


def tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with a digest of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(capsys: pytest.CaptureFixture[str], folder: Path, argv: list[str], *expected: str) -> str:
    """Run ``hiedit argv``; assert exit code 2, one line on stderr holding ``expected``, no file changed."""
    capsys.readouterr()
    before = tree(folder)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    # Warnings and progress bars may come first; the error is the one line left.
    lines = [
        line
        for line in err.replace("\r", "\n").splitlines()
        if line.strip() and ": warning:" not in line and "%|" not in line
    ]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"hiedit {argv[0]}: error:"), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], lines[0]
    assert tree(folder) == before
    return lines[0]


def evaluate(dataset: str | Path, out: Path, *extra: str, agent: str = "noop") -> list[str]:
    return [
        "evaluate",
        "--agent",
        agent,
        "--model",
        MODEL,
        "--dataset",
        str(dataset),
        "--split",
        "all",
        "--num-edits",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
        *extra,
    ]


def train(dataset: str | Path, out: Path, agent: str, *extra: str) -> list[str]:
    return [
        "train",
        "--agent",
        agent,
        "--model",
        MODEL,
        "--dataset",
        str(dataset),
        "--num-edits",
        "2",
        "--steps",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture
def checkpoint_copy(rledit_checkpoint: Path, tmp_path: Path) -> Callable[[], Path]:
    """A fresh copy of the shared RLEdit checkpoint to damage."""

    def copy() -> Path:
        target = tmp_path / "checkpoint"
        target.mkdir()
        for name in ("agent.json", "agent_state.pt", "manifest.json"):
            (target / name).write_bytes((rledit_checkpoint / name).read_bytes())
        return target

    return copy


# ----------------------------------------------------------------------------- data files
@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (json.dumps([RECORD, RECORD]).encode()[:-40], "is not valid JSON"),
        (b"src,alt,rephrase\nWho?,me,Who is?\n", "is not valid JSON: Expecting value at line 1 column 1"),
        (
            json.dumps([{**RECORD, "alt": "caf\u00e9"}])
            .encode("latin-1", errors="strict")
            .replace(b"\\u00e9", b"\xe9"),
            "is not UTF-8 text (byte 0xe9",
        ),
        (
            json.dumps(RECORD).encode() + b'\n{"src": "broken\n' + json.dumps(RECORD).encode(),
            "line 2 is not valid JSON",
        ),
        (b"42", "holds a JSON int, not records"),
    ],
    ids=["empty", "blank", "truncated-json", "csv", "latin-1", "jsonl-bad-line", "not-records"],
)
def test_a_data_file_that_cannot_be_read(content, expected, tmp_path, capsys):
    data = tmp_path / ("edits.jsonl" if b"\n{" in content else "edits.json")
    data.write_bytes(content)
    message = refused(capsys, tmp_path, evaluate(data, tmp_path / "results.json"), expected)
    assert str(data) in message


def test_a_data_file_without_a_usable_record(tmp_path, capsys):
    data = tmp_path / "edits.json"
    data.write_text(json.dumps([{**RECORD, "alt": ""}, {**RECORD, "src": None}]))
    refused(capsys, tmp_path, evaluate(data, tmp_path / "results.json"), "no usable record")


def test_skipped_records_are_reported_on_stderr_and_in_the_results(tmp_path, capsys):
    """Half the records malformed (one in another format): reported, the rest edited."""
    data = tmp_path / "edits.json"
    rows = [RECORD, {**RECORD, "alt": ""}, RECORD, {"prompt": "x", "target_new": "y"}, {**RECORD, "alt": 1997}]
    data.write_text(json.dumps(rows))
    results = tmp_path / "results.json"
    assert main(evaluate(data, results)) == 0
    err = capsys.readouterr().err
    assert "skipped 2 of 5 records (field 'alt' is missing or empty: 1; field 'src' is missing or empty: 1)" in err
    assert "read 1 numbers as text ('alt' of record 4)" in err
    data_report = json.loads(results.read_text())["environment"]["data"]
    assert data_report["skipped"] == 2 and data_report["skipped_records"] == [1, 3] and data_report["records"] == 3
    assert data_report["converted"] == [{"record": 4, "field": "alt"}]


def test_records_cut_by_the_token_limits_are_reported_and_the_limits_are_arguments(tmp_path, capsys):
    data = tmp_path / "edits.json"
    data.write_text(json.dumps([RECORD, {**RECORD, "src": "Tell me, in many words, " * 20 + RECORD["src"]}]))
    results = tmp_path / "results.json"
    assert main(evaluate(data, results, "--env-kwargs", '{"max_prompt_tokens": 200}')) == 0
    assert "records cut to max_prompt_tokens=200" in capsys.readouterr().err
    assert json.loads(results.read_text())["environment"]["data"]["truncated_records"] == [1]
    assert main(evaluate(data, results, "--env-kwargs", '{"max_prompt_tokens": 2000}')) == 0
    assert "records cut" not in capsys.readouterr().err
    refused(
        capsys,
        tmp_path,
        evaluate(data, results, "--env-kwargs", '{"max_answer_tokens": 0}'),
        "max_answer_tokens must be an integer >= 1, got 0",
    )


# ----------------------------------------------------------------------------- arguments
def test_a_negative_seed_is_refused_before_anything_loads(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(evaluate("default", tmp_path / "results.json", "--seed", "-1"))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "hiedit evaluate: error: argument --seed: must be >= 0, got -1"
    assert tree(tmp_path) == {}


@pytest.mark.parametrize(
    "agent, extra", [("untrained_editor", ()), ("noop", ()), ("all", ("--agent-kwargs", '{"step": 0.5}'))]
)
def test_training_an_agent_that_acts_as_built(agent, extra, tmp_path, capsys):
    # untrained_editor inherits RLEdit's training: trained, it would be a trained RLEdit under the wrong name
    refused(
        capsys,
        tmp_path,
        train("default", tmp_path / "run", agent, *extra),
        f"agent '{agent}' acts as built",
        f"hiedit evaluate --agent {agent}",
    )


def test_an_unknown_env_kwargs_key(tmp_path, capsys):
    refused(
        capsys,
        tmp_path,
        evaluate("default", tmp_path / "results.json", "--env-kwargs", '{"num_edit": 3}'),
        "unknown --env-kwargs key(s) ['num_edit']",
        "'num_edits'",
    )


def test_cuda_without_cuda(tmp_path, capsys):
    refused(
        capsys,
        tmp_path,
        evaluate("default", tmp_path / "results.json", "--env-kwargs", '{"device": "cuda"}'),
        "device='cuda' but CUDA is not available",
    )


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"rank": 2.5}, "rank must be an integer >= 1, got 2.5"),
        ({"rank": "4"}, "rank must be an integer >= 1, got '4'"),
        ({"meta_lr": "1e-4"}, "meta_lr must be a finite number in (0, inf), got '1e-4'"),
        ({"rnak": 4}, "bad arguments for agent 'rledit': "),
    ],
    ids=["float-rank", "string-rank", "string-lr", "unknown-key"],
)
def test_wrong_typed_agent_arguments(kwargs, expected, tmp_path, capsys):
    refused(
        capsys, tmp_path, train("default", tmp_path / "run", "rledit", "--agent-kwargs", json.dumps(kwargs)), expected
    )


def test_an_sb3_learning_rate_given_as_a_string(tmp_path, capsys):
    refused(
        capsys,
        tmp_path,
        train("default", tmp_path / "run", "ppo", "--agent-kwargs", '{"learning_rate": "0.001"}'),
        "hyperparameter 'learning_rate' of ppo must be a number, got '0.001'",
    )


# ----------------------------------------------------------------------------- output paths
def test_evaluate_out_is_a_directory(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    refused(capsys, tmp_path, evaluate("default", tmp_path / "results"), "--out", "is a directory")


def test_evaluate_out_under_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    refused(capsys, tmp_path, evaluate("default", tmp_path / "taken" / "results.json"), "cannot create the folder")


def test_train_out_is_a_file(tmp_path, capsys):
    (tmp_path / "run").write_text("a file, not a folder")
    refused(capsys, tmp_path, train("default", tmp_path / "run", "rledit"), "--out", "is a file; give a directory")


# ----------------------------------------------------------------------------- checkpoints
def test_a_config_without_its_state_never_loads_untrained(checkpoint_copy, tmp_path, capsys):
    checkpoint = checkpoint_copy()
    (checkpoint / "agent_state.pt").unlink()
    refused(
        capsys,
        tmp_path,
        evaluate("default", tmp_path / "results.json", "--checkpoint", str(checkpoint), agent="rledit"),
        "is incomplete: agent_state.pt is missing",
    )


def test_a_folder_an_interrupted_save_left(checkpoint_copy, tmp_path, capsys):
    checkpoint = checkpoint_copy()
    (checkpoint / "manifest.json").unlink()
    refused(
        capsys,
        tmp_path,
        evaluate("default", tmp_path / "results.json", "--checkpoint", str(checkpoint), agent="rledit"),
        "is incomplete: it has no manifest.json",
    )


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: (p / "agent_state.pt").write_bytes(b""), "agent_state.pt' has 0 bytes, its manifest says"),
        (
            lambda p: (p / "agent_state.pt").write_bytes(b"\x00" * (p / "agent_state.pt").stat().st_size),
            "agent_state.pt' does not match its manifest's checksum",
        ),
    ],
    ids=["empty-state", "corrupt-state"],
)
def test_a_damaged_checkpoint_file_is_named(damage, expected, checkpoint_copy, tmp_path, capsys):
    checkpoint = checkpoint_copy()
    damage(checkpoint)
    refused(
        capsys,
        tmp_path,
        evaluate("default", tmp_path / "results.json", "--checkpoint", str(checkpoint), agent="rledit"),
        expected,
    )


def test_a_broken_agent_json_is_named(tmp_path, capsys):
    """The config is read (to build the environment) before the manifest is checked: its error names it."""
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "agent.json").write_text('{"agent": ')
    refused(
        capsys,
        tmp_path,
        evaluate("default", tmp_path / "results.json", "--checkpoint", str(checkpoint), agent="rledit"),
        "agent checkpoint file",
        "agent.json' is not valid JSON",
    )


def test_a_corrupt_state_behind_a_matching_manifest_is_named(checkpoint_copy, tmp_path, capsys):
    """Damage the manifest cannot see (it was sealed over a bad file): torch's error becomes one line."""
    checkpoint = checkpoint_copy()
    (checkpoint / "agent_state.pt").write_bytes(b"not a torch file")
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["agent_state.pt"] = {"size": 16, "sha256": hashlib.sha256(b"not a torch file").hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    refused(
        capsys,
        tmp_path,
        evaluate("default", tmp_path / "results.json", "--checkpoint", str(checkpoint), agent="rledit"),
        "agent_state.pt': it is empty or corrupt",
    )


def as_saved_by_0_2_0(checkpoint: Path, **config_changes: object) -> None:
    """Rewrite ``checkpoint``'s ``agent.json`` as hiedit-gym 0.2.0 wrote it (the class in its module of
    then, the learned editors' options by their names of then), or with ``config_changes``, and reseal it."""
    path = checkpoint / "agent.json"
    meta = json.loads(path.read_text())
    config = meta["config"]
    meta["class"] = "hiedit_agents.rledit:RLEditAgent"
    config["trace_of"] = config.pop("editor_reads")
    config["scale"] = {"gradient_norm": "direction", "learned": "running"}[config.pop("update_size")]
    config["precondition"] = config.pop("preconditioner_damping")
    config.update(config_changes)
    path.write_text(json.dumps(meta))
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    data = path.read_bytes()
    manifest["files"]["agent.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def test_a_checkpoint_of_the_earlier_version_acts_as_it_did(rledit_checkpoint, checkpoint_copy, tmp_path, capsys):
    """0.2.0 kept the agents in other modules and named three options otherwise: its checkpoints load as saved."""
    from hiedit_agents.learned import RLEditAgent

    old = checkpoint_copy()
    as_saved_by_0_2_0(old)
    assert RLEditAgent.saved_meta(old)["config"] == RLEditAgent.saved_meta(rledit_checkpoint)["config"]
    scores = []
    for checkpoint in (rledit_checkpoint, old):
        out = tmp_path / f"{checkpoint.name}.json"
        assert main(evaluate("default", out, "--checkpoint", str(checkpoint), agent="rledit")) == 0
        result = json.loads(out.read_text())
        scores.append([result["per_edit"], result["ES"], result["GS"], result["LS"]])
    assert scores[0] == scores[1]


def test_a_checkpoint_whose_update_size_is_gone_is_named(checkpoint_copy, tmp_path, capsys):
    old = checkpoint_copy()
    as_saved_by_0_2_0(old, scale="edit")
    refused(
        capsys,
        tmp_path,
        evaluate("default", tmp_path / "results.json", "--checkpoint", str(old), agent="rledit"),
        "scale='edit', which this version no longer has",
        "train it again",
    )


def test_a_diverged_editor_is_named_not_the_action(rledit_checkpoint, tmp_path, capsys, monkeypatch):
    import torch
    from hiedit_agents.learned import LearnedEditorAgent

    real_load = LearnedEditorAgent.load_state_dict

    def diverged(self, state):
        real_load(self, state)
        with torch.no_grad():
            self.editor.log_lr.fill_(float("inf"))

    monkeypatch.setattr(LearnedEditorAgent, "load_state_dict", diverged)
    message = refused(
        capsys,
        tmp_path,
        evaluate("default", tmp_path / "results.json", "--checkpoint", str(rledit_checkpoint), agent="rledit"),
        "the editor diverged",
    )
    assert "action" not in message


# ----------------------------------------------------------------------------- resuming
def test_resume_with_another_algorithm(rledit_checkpoint, tmp_path, capsys):
    refused(
        capsys,
        rledit_checkpoint,
        train("default", rledit_checkpoint, "hiedit", "--resume"),
        "holds a hiedit_agents.learned.rledit:RLEditAgent agent, not 'hiedit'",
    )


def test_resume_of_a_finished_run(rledit_checkpoint, capsys):
    refused(
        capsys,
        rledit_checkpoint,
        train("default", rledit_checkpoint, "rledit", "--resume"),
        "nothing to resume",
        "training_state",
    )


@pytest.fixture(scope="module")
def sac_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sac") / "run"
    kwargs = {"learning_starts": 5, "eval_freq": 0, "checkpoint_freq": 0}
    assert main(train("default", out, "sac", "--agent-kwargs", json.dumps(kwargs))) == 0
    return out


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda p: (p / "replay_buffer.pkl").write_bytes((p / "replay_buffer.pkl").read_bytes()[:100]),
            "replay_buffer.pkl' has 100 bytes",
        ),
        (lambda p: (p / "replay_buffer.pkl").unlink(), "is incomplete: replay_buffer.pkl is missing"),
    ],
    ids=["truncated-buffer", "missing-buffer"],
)
def test_sb3_resume_refuses_a_damaged_replay_buffer(damage, expected, sac_checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for file in sac_checkpoint.iterdir():
        if file.is_file():
            (run / file.name).write_bytes(file.read_bytes())
    damage(run)
    refused(capsys, tmp_path, train("default", run, "sac", "--resume", "--steps", "4"), expected)
