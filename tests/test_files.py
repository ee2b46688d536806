"""Atomic files, output-path checks and sealed checkpoint folders (hiedit_env.files, hiedit_agents.common.checkpoint)."""

from __future__ import annotations

import json
import os

import pytest
from hiedit_agents.common.checkpoint import (
    CheckpointError,
    CheckpointWriter,
    content_sha256,
    progress_folder,
    save_swapped,
    verify_checkpoint,
)

from hiedit_env.files import atomic_write, check_output_dir, check_output_file, write_json


def test_written_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "out.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_json(target, {"old": True})

    def half_then_fail(tmp):
        tmp.write_text('{"new": ')
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, half_then_fail)
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_output_paths_are_checked(tmp_path):
    assert check_output_file(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    assert (tmp_path / "new").is_dir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        check_output_file(tmp_path / "new")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file; give a directory"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(OSError, match="cannot create the folder"):
        check_output_dir(tmp_path / "file" / "run")


def test_a_sealed_checkpoint_lists_every_file_and_an_unsealed_one_is_refused(tmp_path):
    with CheckpointWriter(tmp_path) as writer:
        writer.write_json("a.json", {"x": 1})
        writer.write("b.bin", lambda tmp: tmp.write_bytes(b"\x01\x02"))
    manifest = verify_checkpoint(tmp_path)
    assert sorted(manifest["files"]) == ["a.json", "b.bin"] and manifest["files"]["b.bin"]["size"] == 2
    with pytest.raises(RuntimeError), CheckpointWriter(tmp_path) as writer:  # a save that fails part-way
        writer.write_json("a.json", {"x": 2})
        raise RuntimeError("killed")
    with pytest.raises(CheckpointError, match="no manifest.json"):
        verify_checkpoint(tmp_path)


def test_a_swapped_folder_is_complete_at_every_moment(tmp_path, monkeypatch):
    out = tmp_path / "run"
    save_swapped(out / "training_state", lambda w: w.write_json("step.json", {"step": 1}))
    assert progress_folder(out) == out / "training_state"
    # Die between moving the old folder aside and moving the new one in: the old one is found.
    real_rename = type(out).rename

    def die_on_second_rename(self, target):
        if str(self).endswith(".partial"):
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(type(out), "rename", die_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_swapped(out / "training_state", lambda w: w.write_json("step.json", {"step": 2}))
    folder = progress_folder(out)
    assert folder == out / "training_state.previous"
    verify_checkpoint(folder)
    assert json.loads((folder / "step.json").read_text()) == {"step": 1}


def test_content_hash_tells_states_apart_where_their_files_cannot(tmp_path):
    import torch

    state = {"editor": {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}, "steps": 4, "lr": [1e-3]}
    for name in ("a.pt", "b.pt"):
        atomic_write(tmp_path / name, lambda tmp: torch.save(state, tmp))
    # two saves of one state: different bytes (torch.save's serialization id, the temporary file's name)
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
    loaded = [torch.load(tmp_path / name) for name in ("a.pt", "b.pt")]
    assert content_sha256(loaded[0]) == content_sha256(loaded[1]) == content_sha256(state)
    # any value, dtype, shape or key changes it; key order does not
    changed = {"editor": {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(4)}, "steps": 4, "lr": [1e-3]}
    recast = {**state, "editor": {**state["editor"], "w": state["editor"]["w"].double()}}
    reshaped = {**state, "editor": {**state["editor"], "w": state["editor"]["w"].reshape(3, 2)}}
    renamed = {**state, "step": 4}
    hashes = {content_sha256(s) for s in (state, changed, recast, reshaped, renamed)}
    assert len(hashes) == 5
    assert content_sha256({"lr": [1e-3], "steps": 4, "editor": state["editor"]}) == content_sha256(state)
