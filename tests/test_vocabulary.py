"""The CI vocabulary check (``.ci/vocabulary.py``) on planted violations and legitimate look-alikes.

The violations are assembled from pieces at run time: written out whole, they would make this
file fail the check it tests (which runs on every tracked file, this one included).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / ".ci" / "vocabulary.py"
STOP, SESSION, ISSUE = "st" + "op", "ses" + "sion", "is" + "sue"


@pytest.fixture(scope="module")
def vocabulary():
    spec = importlib.util.spec_from_file_location("vocabulary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VIOLATIONS = [
    (f"The default since {STOP} 17.", "a diary number"),
    (f"Before {STOP}21 the step was larger.", "a diary number"),
    (f"see the {STOP}-9 table", "a diary number"),
    (f"results in seeds_{STOP}22/zsre.md", "a diary number"),
    (f"measured in {SESSION} 4", "a session number"),
    (f"as asked in {ISSUE} #31", "an issue number"),
    (f"reaches the {ISSUE}'s target", "the tracker's wording"),
    ("checkpoint at " + "runs/" + "s21/hiedit/seed0", "the path of an uncommitted run"),
    ("speed_hiedit_before_" + "dbad" + "290.json", "a commit hash as a version name"),
    ("slower since " + "1a2b" + "3c4", "a commit hash as a version name"),
    ("COMMIT " + "9F2C" + "E01D is the baseline", "a commit hash as a version name"),
    ("`git worktree add /tmp/old " + "e761" + "9c0`", "a commit hash as a version name"),
]

LOOK_ALIKES = [
    "The last edit stops the episode; a second Ctrl-C stops at once.",
    "early_stop: 10 and stop_after 3",
    "process.send_signal(signal.SIGSTOP)  # SIGSTOP 19 on Linux",
    "nonstop 24 hours",
    '"sha256": "9f2c41ab0e5d7c3b1a2f4e6d8c0b9a7f5e3d1c2b4a6f8e0d2c4b6a8f0e2d4c6b"',
    "peak 1.67 GB, the diagonal form in the same session 1.49 s",
    "hiedit train --out runs/zsre/hiedit  # runs/sb3/ppo as well",
    '@pytest.fixture(scope="session")  # one per test session',
    "after 1234567 edits, at 5e3 steps, from 2026-12-07",
    "This issue of the journal; issues are welcome.",
]


def plant(root: Path) -> None:
    """Two files with violations (one in its name), two with look-alikes only, and a binary one."""
    (root / "docs").mkdir()
    (root / "docs" / "history.md").write_text("\n".join(text for text, _ in VIOLATIONS) + "\n")
    (root / "notes.md").write_text("\n".join(LOOK_ALIKES) + "\n")
    # Data holds hex ids of its own: a short hash on its own is a hit in text and code only.
    (root / "ids.json").write_text(json.dumps({"id": "a1b2c3" + "d4e5f6", "at": 0.5, "hidden": "deadbe" + "ef01"}))
    (root / f"{STOP}16").mkdir()
    (root / f"{STOP}16" / "speed.json").write_text('{"seconds": 1.0}\n')
    (root / "weights.bin").write_bytes(b"\0" + f"{STOP} 17".encode())


def test_each_planted_violation_is_named_with_its_line_and_what_it_is(vocabulary, tmp_path: Path) -> None:
    plant(tmp_path)
    problems = vocabulary.scan(tmp_path, vocabulary.tracked_files(tmp_path))
    in_text = [p for p in problems if p.startswith("docs/history.md:")]
    assert len(in_text) == len(VIOLATIONS)
    for line, (problem, (_, what)) in enumerate(zip(in_text, VIOLATIONS), start=1):
        assert problem.startswith(f"docs/history.md:{line}: ") and problem.endswith(f"({what})"), problem
    assert f"{STOP}16/speed.json:0: '{STOP}16' (a diary number, in the file name)" in problems


def test_look_alikes_and_binary_files_pass(vocabulary, tmp_path: Path) -> None:
    plant(tmp_path)
    problems = vocabulary.scan(tmp_path, vocabulary.tracked_files(tmp_path))
    assert not [p for p in problems if p.startswith(("notes.md", "ids.json", "weights.bin"))]
    assert len(problems) == len(VIOLATIONS) + 1  # the text's lines and the folder name, nothing else


def test_the_command_checks_only_tracked_files_and_exits_1(tmp_path: Path) -> None:
    plant(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "notes.md", f"{STOP}16"], cwd=tmp_path, check=True)  # history.md untracked
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"{STOP}16/speed.json:0: '{STOP}16' (a diary number, in the file name)"]
    assert "1 work-history reference(s) in 1 of 2 files" in done.stderr
    (tmp_path / f"{STOP}16" / "speed.json").rename(tmp_path / "notes.json")
    subprocess.run(["git", "add", "-A", "notes.json", f"{STOP}16"], cwd=tmp_path, check=True)
    clean = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert (clean.returncode, clean.stdout) == (0, "")


def test_a_missing_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "missing")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == f"vocabulary: error: {tmp_path / 'missing'} is not a folder"
