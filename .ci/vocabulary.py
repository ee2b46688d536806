#!/usr/bin/env python3
"""Fail on work-history vocabulary in the repository's file names and contents.

The product speaks of versions, dates and options, never of how the team's days went. This check
finds, in every tracked file's path and text (the examples are spelled out, so this file passes its
own check):

* diary numbers: "stop" followed by a number, with a space, a hyphen, an underscore or nothing
  between (also at the end of a longer file or folder name); the word in plain English ("stops
  the episode", ``SIGSTOP``, ``early_stop``) is not followed by a number;
* "session" or "issue" followed by a number, and "the issue" + "'s": the tracker's numbers and
  wording are not the product's;
* paths of uncommitted runs: ``runs/s`` + digits (``runs/<name>`` as a user's output folder is fine);
* commit hashes used as version names: seven to forty hex digits with at least one letter and one
  digit right after before, after, since, until, at, from, pre, post, commit or rev (joined by a
  space, a hyphen or an underscore), anywhere; and in text and code (not in data files: .json,
  .jsonl, .csv, .tsv) any word of seven to twelve such hex digits, the length of a short hash.
  SHA-256 digests (64 digits) and hex in data are not hashes of ours.

A number right after "stop", "session" or "issue" that goes on with a decimal point ("the same
session 1.49") is a measurement, not a diary number.

Usage: ``python .ci/vocabulary.py [ROOT]`` (default: the repository holding this file). A git work
tree is checked file by file as ``git ls-files`` lists them; any other folder, every file under it.
Prints ``path:line: 'match' (what it is)`` for each hit (line 0: the file's name) and exits 1 if
there is one. Standard library only, so CI runs it before anything is installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

# Matched on the ASCII-lowercased bytes (same offsets as the file's). Each pattern opens with a literal,
# so the scan is a fast substring search (a leading look-behind or IGNORECASE made it ten times
# slower on the repository's 5 MB); the look-behind after the literal keeps "stop" inside a longer
# word (SIGSTOP) from matching. The patterns' own source text does not match them.
_HEX = rb"[ _-](?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![0-9a-z])"
_HISTORY_WORDS = ("before", "after", "since", "until", "at", "from", "pre", "post", "commit", "rev")
_NUMBER = rb"[0-9]+(?![0-9a-z]|\.[0-9])"
COMMIT_HASH = "a commit hash as a version name"
PATTERNS: list[tuple[str, re.Pattern[bytes]]] = [
    ("a diary number", re.compile(rb"stop(?<![a-z]stop)[ _-]?" + _NUMBER)),
    ("a session number", re.compile(rb"session(?<![a-z]session)[ _-]?" + _NUMBER)),
    ("an issue number", re.compile(rb"issue(?<![a-z]issue)[ _-]?#?" + _NUMBER)),
    ("the tracker's wording", re.compile(rb"the issue(?:'|\xe2\x80\x99)s(?![a-z])")),
    ("the path of an uncommitted run", re.compile(rb"runs/s(?<![a-z0-9_]runs/s)[0-9]+(?![0-9a-z])")),
] + [(COMMIT_HASH, re.compile(word.encode() + rb"(?<![a-z]" + word.encode() + rb")" + _HEX)) for word in _HISTORY_WORDS]
# A short hash on its own, in text and code only: data files hold hex ids and digests of their own.
BARE_HASH = re.compile(rb"(?<![0-9a-z_./-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,12}(?![0-9a-z_-])")
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv")


def tracked_files(root: Path) -> list[str]:
    """The files under ``root`` as relative POSIX paths: ``git ls-files`` at a work tree's top, else all files."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True, check=True
        )
        if Path(top.stdout.strip()).resolve() == root.resolve():
            listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
            return [name for name in listed.decode("utf-8", "surrogateescape").split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # no git, or not a work tree
        pass
    return sorted(
        Path(folder, name).relative_to(root).as_posix() for folder, _, names in os.walk(root) for name in names
    )


def _hits(data: bytes, bare_hashes: bool = False) -> list[tuple[int, str, str]]:
    """``(line number, matched text, what it is)`` for every hit in ``data``, in order; with ``bare_hashes``
    also short hashes on their own."""
    lowered = data.lower()  # ASCII only: the offsets stay those of ``data``
    found = {(match.start(), match.end(), what) for what, pattern in PATTERNS for match in pattern.finditer(lowered)}
    if bare_hashes:
        named = {end for _, end, what in found if what == COMMIT_HASH}  # "before_<hash>" is one hit, not two
        found |= {(m.start(), m.end(), COMMIT_HASH) for m in BARE_HASH.finditer(lowered) if m.end() not in named}
    return [
        (data.count(b"\n", 0, start) + 1, data[start:end].decode("utf-8", "replace"), what)
        for start, end, what in sorted(found)
    ]


def scan(root: Path, files: Iterable[str]) -> list[str]:
    """One ``path:line: 'match' (what it is)`` line per hit in the names and the text of ``files``."""
    problems = []
    for name in files:
        problems += [
            f"{name}:0: {found!r} ({what}, in the file name)"
            for _, found, what in _hits(name.encode("utf-8", "surrogateescape"))
        ]
        try:
            data = (root / name).read_bytes()
        except (IsADirectoryError, FileNotFoundError):  # a submodule, or a deleted file git still lists
            continue
        if b"\0" not in data[:8192]:  # a NUL byte: binary, no words to read
            problems += [
                f"{name}:{line}: {found!r} ({what})"
                for line, found, what in _hits(data, bare_hashes=not name.lower().endswith(DATA_SUFFIXES))
            ]
    return problems


def main(argv: list[str]) -> int:
    """Check the folder ``argv[0]`` (default: this repository); 1 if anything is found."""
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    if not root.is_dir():
        print(f"vocabulary: error: {root} is not a folder", file=sys.stderr)
        return 2
    files = tracked_files(root)
    problems = scan(root, files)
    for problem in problems:
        print(problem)
    if problems:
        named = len({problem.split(":")[0] for problem in problems})
        print(
            f"vocabulary: {len(problems)} work-history reference(s) in {named} of {len(files)} files; "
            "name versions, dates and options instead",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
