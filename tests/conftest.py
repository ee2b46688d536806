"""Shared fixtures for the environment's and the agents' tests.

* The hub must fail fast when offline, so the offline switches are set before anything imports
  ``huggingface_hub`` (it reads them at import time).
* The tests need nothing outside the repository: they edit the shipped set (``dataset="default"``,
  60 CounterFact-style records; ``split="train"``/``"test"`` are 48 and 12 of them), files they write
  under ``tmp_path`` (``zsre_format_path``: the shipped set in ZsRE's fields), tiny models built in
  code and the embedded SmolLM2.
* The few tests marked ``shared_data`` check the benchmarks' own data files (ZsRE, CounterFact),
  which live outside the project: in ``../shared/data`` relative to the repository root, or in
  ``$HIEDIT_DATA_DIR``. Where that folder is absent they are skipped with a reason that says how to
  point at it; a ``$HIEDIT_DATA_DIR`` that lacks a file fails them (it was meant to be there).
* The locate agents' key statistics are cached in a folder of this test run (``$HIEDIT_CACHE``, set here
  before anything reads it, so Ray's workers inherit it too), never in the user's cache; it is
  removed at the end.
* ``make_env(model, **kwargs)``: a small environment on a tiny test model (the shipped set, 3 edits
  unless overridden), closed afterwards.
* ``--device`` (default ``cpu``): the device of every environment the tests make through
  ``gym.make`` (it becomes the registered ``HiEdit-v0``'s default), so ``pytest --device cuda`` runs
  the suite on a GPU; the ``device`` fixture gives it to tests that build models themselves.
"""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
TEST_CACHE = tempfile.mkdtemp(prefix="hiedit-test-cache-")
os.environ["HIEDIT_CACHE"] = TEST_CACHE

import json  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

import hiedit_env  # noqa: E402,F401  (registers HiEdit-v0)

# Test code only, never the library: the tiny models' matrices are far too small for intra-op
# threads, and on a shared 2-core machine torch's default of 2 threads made one tiny forward pass
# ~90x slower (0.37 s against 4 ms, measured). HIEDIT_TEST_THREADS=0 leaves torch's default.
_THREADS = int(os.environ.get("HIEDIT_TEST_THREADS", "1"))
if _THREADS > 0:
    torch.set_num_threads(_THREADS)

REPO_ROOT = Path(__file__).resolve().parents[1]
# The benchmarks' data, for the shared_data tests only; a clone kept elsewhere points HIEDIT_DATA_DIR at it.
DATA_DIR = Path(os.environ.get("HIEDIT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default="cpu",
        help="device of the test environments: cpu (default), cuda or cuda:N (fails at once without CUDA)",
    )


def pytest_configure(config: pytest.Config) -> None:
    from hiedit_env.models import resolve_device

    device = config.getoption("--device")
    try:
        resolve_device(device)
    except ValueError as err:
        raise pytest.UsageError(f"--device: {err}") from err
    # gym.make merges the registered kwargs under the caller's: every test environment lands there.
    gym.spec("HiEdit-v0").kwargs["device"] = device
    # The tiny test models' byte-level tokenizer makes some data set prompts longer than the default
    # limit; the token-limit tests check this warning with pytest.warns.
    config.addinivalue_line("filterwarnings", r"ignore:.*records cut to max_prompt_tokens")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(TEST_CACHE, ignore_errors=True)


def _data_file(relative: str) -> str:
    path = DATA_DIR / relative
    if path.is_file():
        return str(path)
    where = (
        f"$HIEDIT_DATA_DIR={DATA_DIR}"
        if "HIEDIT_DATA_DIR" in os.environ
        else f"{DATA_DIR} (../shared/data beside the repository)"
    )
    message = (
        f"benchmark data file {relative} is not in {where}: set HIEDIT_DATA_DIR=/path/to/data, the folder "
        "holding zsre/ and counterfact/, to run the shared_data tests"
    )
    if "HIEDIT_DATA_DIR" in os.environ:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def zsre_path() -> str:
    """``zsre/zsre_mend_1k.json`` of the benchmark data (1,000 records, MEND-style ZsRE); for ``shared_data`` tests."""
    return _data_file("zsre/zsre_mend_1k.json")


@pytest.fixture(scope="session")
def counterfact_path() -> str:
    """``counterfact/counterfact_val.json`` of the benchmark data (1,919 records, flat CounterFact); for
    ``shared_data`` tests."""
    return _data_file("counterfact/counterfact_val.json")


@pytest.fixture(scope="session")
def zsre_format_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shipped set's 60 records written in ZsRE's MEND fields (``src``, ``alt``, ``rephrase``, ``loc``,
    ``loc_ans``, ``answers``): what a ZsRE file reads as, with no file from outside the repository."""
    shipped = json.loads((REPO_ROOT / "hiedit_env" / "assets" / "default_edits.json").read_text())
    rows = [
        {
            "subject": r["subject"],
            "src": r["prompt"],
            "alt": r["target_new"],
            "answers": [r["ground_truth"]],
            "rephrase": r["rephrase_prompt"],
            "loc": f"nq question: {r['locality_prompt']}",
            "loc_ans": r["locality_ground_truth"],
        }
        for r in shipped
    ]
    path = tmp_path_factory.mktemp("zsre_format") / "zsre_format.json"
    path.write_text(json.dumps(rows))
    return str(path)


@pytest.fixture(scope="session")
def rledit_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An RLEdit checkpoint from ``hiedit train`` on ``test-tiny-llama`` (the shipped set, 3-edit episodes,
    3 training edits, no validation), trained once per test run. Tests read it and never write into it:
    a test that damages or resumes a checkpoint copies it first."""
    from hiedit_agents.cli import main

    out = tmp_path_factory.mktemp("rledit") / "run"
    argv = ["train", "--agent", "rledit", "--model", "test-tiny-llama", "--dataset", "default"]
    argv += ["--num-edits", "3", "--steps", "3", "--threads", "1", "--agent-kwargs", '{"validation_edits": 0}']
    assert main([*argv, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> str:
    """The test run's ``--device``."""
    return pytestconfig.getoption("--device")


@pytest.fixture
def make_env() -> Iterator[Callable[..., gym.Env]]:
    """``make_env(model, **kwargs)``: a small HiEdit environment (the shipped set, 3 edits unless overridden),
    closed afterwards."""
    made: list[gym.Env] = []

    def factory(model: str = "test-tiny-gpt2", **kwargs: Any) -> gym.Env:
        env = gym.make("HiEdit-v0", model=model, **{"dataset": "default", "num_edits": 3, **kwargs})
        made.append(env)
        return env

    yield factory
    for env in made:
        env.close()


def full_action(env: gym.Env, layers: float = 1.0, update: float = 0.0) -> dict[str, np.ndarray]:
    """The same layer value and step-size value for every candidate module."""
    n = len(env.unwrapped.candidate_modules)
    return {"layers": np.full(n, layers, np.float32), "update": np.full(n, update, np.float32)}


def snapshot(env: gym.Env) -> list[torch.Tensor]:
    """A copy of the environment's candidate weights (``candidate_weights`` returns views)."""
    return [w.clone() for w in env.unwrapped.candidate_weights()]


def base_weights(env: gym.Env) -> list[torch.Tensor]:
    """The stored unedited weights, in Linear orientation [d_out, d_in]."""
    env = env.unwrapped
    modules = env.shared.modules(env.candidate_modules)
    return [
        env.shared.base[name].T if isinstance(modules[name], Conv1D) else env.shared.base[name]
        for name in env.candidate_modules
    ]


def same_weights(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Bit-for-bit equality of two lists of tensors."""
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture
def helpers() -> SimpleNamespace:
    """The helpers above as a fixture, so test modules need not import conftest."""
    return SimpleNamespace(
        full_action=full_action, snapshot=snapshot, base_weights=base_weights, same_weights=same_weights
    )


@pytest.fixture
def benchmark_data_stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Empty stand-ins for the benchmark data files, found through ``$HIEDIT_DATA_DIR`` as the specs find the
    real ones: validating a spec only checks that its files exist. Returns their paths."""
    stand_ins = {
        str(tmp_path / "data" / name)
        for name in ("zsre/zsre_mend_1k.json", "counterfact/counterfact_train.json", "counterfact/counterfact_val.json")
    }
    for name in stand_ins:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).touch()
    monkeypatch.setenv("HIEDIT_DATA_DIR", str(tmp_path / "data"))
    return stand_ins
