"""Checkpoint folders: written file by file atomically, sealed by a manifest, verified on load.

A checkpoint is a folder of files (``agent.json``, ``agent_state.pt``, SB3's ``model.zip``, ...)
and ``manifest.json``, which lists every file with its size and SHA-256 and the format version.
:class:`CheckpointWriter` removes the old manifest before it writes anything, writes each file to a
temporary name and renames it, and writes the new manifest last. So a save that is killed, runs out
of disk or fails part-way leaves a folder without a manifest, and one that overwrote an older run
leaves files that do not match any manifest: :func:`verify_checkpoint` refuses both, naming the
file, instead of pairing a new configuration with an old state or loading an untrained editor.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiedit_env.files import atomic_write, write_json

MANIFEST_FILE = "manifest.json"
# An agent's files (:meth:`~hiedit_agents.common.base.Agent.save`): its class and configuration, its
# learned state, and what else a training run carries (in the progress folder only).
CONFIG_FILE = "agent.json"
STATE_FILE = "agent_state.pt"
PROGRESS_FILE = "training_state.pt"
# The folder inside a training run's output that holds what ``hiedit train --resume`` continues from.
PROGRESS_DIR = "training_state"
# Version 1: the first format with a manifest (hiedit-gym 0.2).
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, mismatched or corrupt."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CheckpointWriter:
    """Writes the files of one checkpoint folder and seals them with a manifest on a clean exit.

    Use as a context manager; files written through it are listed in the manifest, which is written
    only when the block ends without an error.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.files: list[str] = []

    def __enter__(self) -> CheckpointWriter:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Unseal first: from here until the new manifest is written the folder reads as incomplete.
        (self.directory / MANIFEST_FILE).unlink(missing_ok=True)
        return self

    def write(self, name: str, write: Callable[[Path], None]) -> None:
        """Write the file ``name`` through ``write(tmp_path)`` (atomically) and list it."""
        atomic_write(self.directory / name, write)
        self.files.append(name)

    def write_json(self, name: str, value: Any) -> None:
        write_json(self.directory / name, value)
        self.files.append(name)

    def write_torch(self, name: str, value: Any) -> None:
        self.write(name, lambda tmp: torch.save(value, tmp))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            return
        entries = {
            name: {"size": (self.directory / name).stat().st_size, "sha256": _sha256(self.directory / name)}
            for name in self.files
        }
        write_json(self.directory / MANIFEST_FILE, {"format_version": FORMAT_VERSION, "files": entries})


def checkpoint_identity(directory: str | Path) -> dict[str, Any]:
    """The sealed manifest's table of files (size and SHA-256 of each): what tells one checkpoint from
    another with the same configuration (e.g. for an evaluation snapshot to continue only its own)."""
    return read_json(Path(directory) / MANIFEST_FILE, "checkpoint manifest")["files"]


def content_sha256(value: Any) -> str:
    """SHA-256 of ``value``'s content: nested dicts (keys in order), lists, tensors and arrays (dtype, shape
    and values) and JSON-able leaves. Two saves of one state hash alike here, which their files do not:
    ``torch.save`` writes a random serialization id and the temporary file's name into its archive."""
    digest = hashlib.sha256()

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            digest.update(b"{")
            for key in sorted(item, key=str):
                digest.update(json.dumps(str(key)).encode())
                walk(item[key])
            digest.update(b"}")
        elif isinstance(item, (list, tuple)):
            digest.update(b"[")
            for element in item:
                walk(element)
            digest.update(b"]")
        elif isinstance(item, torch.Tensor):
            tensor = item.detach().cpu().contiguous()
            digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(item, np.ndarray):
            digest.update(f"array {item.dtype} {item.shape}".encode())
            digest.update(np.ascontiguousarray(item).tobytes())
        else:
            digest.update(json.dumps(item, default=str).encode())

    walk(value)
    return digest.hexdigest()


def verify_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The manifest of the checkpoint in ``directory`` after checking every file it lists (present,
    same size, same SHA-256). Raises :class:`CheckpointError` naming the folder or file otherwise."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint folder {str(directory)!r}")
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(directory)!r} is incomplete: it has no {MANIFEST_FILE} (a save was "
            "interrupted, or it was written before checkpoints carried one); train it again"
        )
    manifest = read_json(path, "checkpoint manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{str(path)!r} is not a checkpoint manifest (no 'files' table)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has format version {manifest.get('format_version')!r}; this version "
            f"of hiedit-gym reads version {FORMAT_VERSION}"
        )
    for name, entry in manifest["files"].items():
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {str(directory)!r} is incomplete: {name} is missing")
        size = file.stat().st_size
        if size != entry.get("size"):
            raise CheckpointError(
                f"checkpoint file {str(file)!r} has {size} bytes, its manifest says "
                f"{entry.get('size')}: it was changed or cut short after the save"
            )
        if _sha256(file) != entry.get("sha256"):
            raise CheckpointError(
                f"checkpoint file {str(file)!r} does not match its manifest's checksum: it was changed after the save"
            )
    return manifest


def read_json(path: Path, what: str) -> Any:
    """A JSON file's value, with one line naming the file when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{what} {str(path)!r} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{what} {str(path)!r} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None


def read_checkpoint_meta(directory: str | Path) -> dict[str, Any]:
    """The ``agent.json`` of a checkpoint directory, with one line naming the file when it is missing,
    not JSON, or lacks a field."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"no agent checkpoint in {str(directory)!r} (missing {CONFIG_FILE})")
    meta = read_json(path, "agent checkpoint file")
    missing = [
        key
        for key in ("agent", "class", "config", "candidate_modules")
        if not isinstance(meta, dict) or key not in meta
    ]
    if missing or not isinstance(meta["config"], dict):
        raise CheckpointError(f"agent checkpoint file {str(path)!r} lacks {missing or ['a config object']}")
    return meta


def load_torch(path: Path, map_location: Any) -> Any:
    """``torch.load`` (tensors only) with one line naming the file when it is empty or corrupt."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"cannot read {str(path)!r}: it is empty or corrupt ({reason})") from None


def save_swapped(directory: str | Path, write: Callable[[CheckpointWriter], None]) -> Path:
    """Write a whole checkpoint folder through ``write(writer)`` so that ``directory`` holds a complete
    checkpoint at every moment: the new one is written and sealed beside it (``.partial``), the old one
    moved aside (``.previous``), the new one moved in, the old one removed. A kill between the two
    moves leaves ``.previous``, which :func:`progress_folder` falls back on."""
    directory = Path(directory)
    partial, previous = (
        directory.with_name(directory.name + ".partial"),
        directory.with_name(directory.name + ".previous"),
    )
    shutil.rmtree(partial, ignore_errors=True)
    with CheckpointWriter(partial) as writer:
        write(writer)
    if directory.exists():
        shutil.rmtree(previous, ignore_errors=True)
        directory.rename(previous)
    partial.rename(directory)
    shutil.rmtree(previous, ignore_errors=True)
    return directory


def progress_folder(out: str | Path) -> Path | None:
    """The checkpoint an interrupted run in ``out`` continues from (:data:`PROGRESS_DIR`, or the one a
    kill part-way through :func:`save_swapped` left aside), ``None`` when there is none."""
    for folder in (Path(out) / PROGRESS_DIR, Path(out) / f"{PROGRESS_DIR}.previous"):
        if folder.is_dir():
            return folder
    return None


def remove_progress(out: str | Path) -> None:
    """Remove the progress checkpoint of a run that completed."""
    for suffix in ("", ".partial", ".previous"):
        shutil.rmtree(Path(out) / f"{PROGRESS_DIR}{suffix}", ignore_errors=True)
