"""What every agent of the zoo shares, one concern per module:

* :mod:`~hiedit_agents.common.base`: the :class:`~hiedit_agents.common.base.Agent` contract;
* :mod:`~hiedit_agents.common.checkpoint`: checkpoint folders, sealed by a manifest and verified on load;
* :mod:`~hiedit_agents.common.env_util`: the environment a checkpoint needs to act;
* :mod:`~hiedit_agents.common.evaluation`: the evaluation loop (:func:`~hiedit_agents.common.evaluation.run_episode`);
* :mod:`~hiedit_agents.common.memory`: ``--low-memory``'s allocator setting and the peak-memory figures.
"""
