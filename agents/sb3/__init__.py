"""Stable-Baselines3 learners as zoo agents: ``ppo``, ``a2c``, ``sac``, ``td3`` and ``maskable_ppo``.

Each algorithm controls one level of the hierarchy through a wrapper of :mod:`hiedit_env.wrappers`
(SB3 takes no ``Dict`` actions). Hyperparameters come from ``hyperparams/<algorithm>.yml`` in the
format of the RL Baselines3 Zoo, or from a user's file (``hyperparams="my.yml"``); any key can be
overridden from the command line with ``--agent-kwargs '{"learning_rate": 0.001}'``. A file holds:

* the ``HiEdit-v0`` entry, which the zoo reads too (``python -m rl_zoo3.train --conf-file``, see
  docs/rl-zoo.md): ``n_timesteps``, ``policy``, ``n_envs``, ``normalize``, ``env_wrapper``,
  ``env_kwargs``, ``policy_kwargs``, ``noise_type``/``noise_std`` (action noise for the off-policy
  algorithms: ``normal`` or ``ornstein-uhlenbeck``), plus the algorithm's own arguments.
  ``env_wrapper`` is the zoo's list ``[{"hiedit_env.wrappers.ChooseLayersInTurn": {...}}, ...]``
  (``module:Class`` is read too): exactly one level wrapper, then optional Gymnasium observation
  wrappers (``gymnasium.wrappers.FlattenObservation``). A level wrapper's ``editor`` or ``layers``
  may name a zoo agent, ``{"agent": "rledit", "checkpoint": "runs/rledit"}`` or ``{"agent": "topk_grad"}``;
* the ``hiedit_train`` section, keys of ours that the zoo never reads (it would pass them to the
  algorithm), merged over the entry:

  * ``level``: ``high``, ``low`` or ``flat``, the level the algorithm controls (documentation; the
    wrapper decides);
  * ``vec_env``: ``dummy`` (copies in this process: they share one model, so memory barely grows) or
    ``subproc`` (one process and one model per copy);
  * ``eval_freq``/``eval_episodes``/``eval_split``/``eval_dataset``: an evaluation episode on held-out
    edits (the ``eval_split`` of the training data, or of ``eval_dataset`` when training uses a whole
    file) every ``eval_freq`` agent steps, logged to TensorBoard only (the saved model is the last one,
    never the best on those edits, so they select nothing);
  * ``checkpoint_freq``: save the agent (model, ``VecNormalize`` statistics, replay buffer) every that
    many agent steps, so ``hiedit train --resume`` continues an interrupted run.

``--steps`` counts edits (environment steps). ``ChooseLayersInTurn`` takes ``k`` agent decisions per
edit, so SB3's ``total_timesteps`` is ``k`` times larger there.
"""

from .agent import SB3_AGENTS, A2CAgent, MaskablePPOAgent, PPOAgent, SACAgent, SB3Agent, TD3Agent
from .callbacks import RewardTermsCallback, SaveAgentCallback
from .hyperparams import HYPERPARAMS_DIR, load_hyperparams
from .wrappers import editor_update_mode, wrap_levels

__all__ = [
    "HYPERPARAMS_DIR",
    "SB3_AGENTS",
    "A2CAgent",
    "MaskablePPOAgent",
    "PPOAgent",
    "RewardTermsCallback",
    "SACAgent",
    "SB3Agent",
    "SaveAgentCallback",
    "TD3Agent",
    "editor_update_mode",
    "load_hyperparams",
    "wrap_levels",
]
