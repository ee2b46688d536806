"""Shared fixtures for the environment's and the agents' tests.

* The hub must fail fast when offline, so the offline switches are set before anything imports
  ``huggingface_hub`` (it reads them at import time).
* The data sets live outside the project, in ``../shared/data`` relative to the repository root
  (or ``$HIEDIT_DATA_DIR``).
  CI has them, so a missing file **fails** the test with a clear message; nothing is skipped.
* ``make_env(model, **kwargs)``: a small environment on a tiny test model (ZsRE, 3 edits unless
  overridden), closed afterwards; the ZsRE file's two skipped records are not warned about here
  (the records tests check that warning on purpose).
* ``--device`` (default ``cpu``): the device of every environment the tests make through
  ``gym.make`` (it becomes the registered ``HiEdit-v0``'s default), so ``pytest --device cuda`` runs
  the suite on a GPU; the ``device`` fixture gives it to tests that build models themselves.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings  # noqa: E402
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
# A clone kept elsewhere points HIEDIT_DATA_DIR at the shared data instead.
DATA_DIR = Path(os.environ.get("HIEDIT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu",
                     help="device of the test environments: cpu (default), cuda or cuda:N (fails at once without CUDA)")


def pytest_configure(config: pytest.Config) -> None:
    from hiedit_env.models import resolve_device

    device = config.getoption("--device")
    try:
        resolve_device(device)
    except ValueError as err:
        raise pytest.UsageError(f"--device: {err}") from err
    # gym.make merges the registered kwargs under the caller's: every test environment lands there.
    gym.spec("HiEdit-v0").kwargs["device"] = device
    config.addinivalue_line("markers", "smollm2: loads the embedded SmolLM2-135M model (about 20 s on a CPU)")
    # The ZsRE file's two records with an empty `alt`, skipped on purpose by every environment made
    # from it (gymnasium's checker re-creates environments through env.spec). The records tests
    # check this warning with pytest.warns, which records it regardless of this filter.
    config.addinivalue_line("filterwarnings", r"ignore:.*zsre_mend_1k\.json. skipped 2 of 1000 records")
    # The tiny test models' byte-level tokenizer makes some data set prompts longer than the default
    # limit; the token-limit tests check this warning with pytest.warns.
    config.addinivalue_line("filterwarnings", r"ignore:.*records cut to max_prompt_tokens")


def _data_file(relative: str) -> str:
    path = DATA_DIR / relative
    if not path.is_file():
        pytest.fail(
            f"test data file {path} is missing: the tests read the shared benchmark data from "
            f"../shared/data relative to the repository root {REPO_ROOT}, or from $HIEDIT_DATA_DIR "
            "(see ../shared/data/README.md)",
            pytrace=False,
        )
    return str(path)


@pytest.fixture(scope="session")
def zsre_path() -> str:
    """``../shared/data/zsre/zsre_mend_1k.json`` (1,000 records, MEND-style ZsRE)."""
    return _data_file("zsre/zsre_mend_1k.json")


@pytest.fixture(scope="session")
def counterfact_path() -> str:
    """``../shared/data/counterfact/counterfact_val.json`` (1,919 records, flat CounterFact)."""
    return _data_file("counterfact/counterfact_val.json")


@pytest.fixture(scope="session")
def counterfact_train_path() -> str:
    """``../shared/data/counterfact/counterfact_train.json`` (10,000 records, flat CounterFact)."""
    return _data_file("counterfact/counterfact_train.json")


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> str:
    """The test run's ``--device``."""
    return pytestconfig.getoption("--device")


@pytest.fixture
def make_env(zsre_path: str) -> Iterator[Callable[..., gym.Env]]:
    """``make_env(model, **kwargs)``: a small HiEdit environment (ZsRE, 3 edits unless overridden), closed afterwards."""
    made: list[gym.Env] = []

    def factory(model: str = "test-tiny-gpt2", **kwargs: Any) -> gym.Env:
        kwargs = {"dataset": zsre_path, "num_edits": 3, **kwargs}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*skipped \d+ of \d+ records")
            env = gym.make("HiEdit-v0", model=model, **kwargs)
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
    return [env.shared.base[name].T if isinstance(modules[name], Conv1D) else env.shared.base[name]
            for name in env.candidate_modules]


def same_weights(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Bit-for-bit equality of two lists of tensors."""
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture
def helpers() -> SimpleNamespace:
    """The helpers above as a fixture, so test modules need not import conftest."""
    return SimpleNamespace(full_action=full_action, snapshot=snapshot, base_weights=base_weights,
                           same_weights=same_weights)
