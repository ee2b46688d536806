"""What every agent of the zoo shares, one concern per module:

* :mod:`~hiedit_agents.common.base`: the :class:`~hiedit_agents.common.base.Agent` contract;
* :mod:`~hiedit_agents.common.checkpoint`: checkpoint folders, sealed by a manifest and verified on load;
* :mod:`~hiedit_agents.common.env_util`: the environment an agent needs (from the command line's
  options or from a checkpoint) and what a results file records of it;
* :mod:`~hiedit_agents.common.commands`: what ``hiedit train`` and ``hiedit evaluate`` do, for the CLI
  and sweep cells alike;
* :mod:`~hiedit_agents.common.evaluation`: the evaluation loop (:func:`~hiedit_agents.common.evaluation.run_episode`);
* :mod:`~hiedit_agents.common.memory`: ``--low-memory``'s allocator setting and the peak-memory figures.
"""
