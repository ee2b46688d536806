"""HiEdit Gym: lifelong knowledge editing of LLMs as a hierarchical Gymnasium environment.

Importing this package registers ``HiEdit-v0``; ``gym.make("hiedit_env:HiEdit-v0")`` imports it for you.
"""

from gymnasium.envs.registration import register, registry

from .action import ActionError
from .env import HiEditEnv
from .models import BUILTIN_MODELS, EMBEDDED_MODEL, TEST_MODELS, ModelLoadError, clear_model_cache
from .objective import ObjectiveTerms
from .options import EditObjective, RewardWeights
from .records import EditRecord, EditSet, RecordError, load_edits
from .trace import EditTrace

__all__ = [
    "ActionError",
    "BUILTIN_MODELS",
    "EMBEDDED_MODEL",
    "EditObjective",
    "EditRecord",
    "EditSet",
    "EditTrace",
    "HiEditEnv",
    "ModelLoadError",
    "ObjectiveTerms",
    "RecordError",
    "RewardWeights",
    "TEST_MODELS",
    "clear_model_cache",
    "load_edits",
]
__version__ = "0.2.0"

if "HiEdit-v0" not in registry:
    register(id="HiEdit-v0", entry_point="hiedit_env.env:HiEditEnv")
