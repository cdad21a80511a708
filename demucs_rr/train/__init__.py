"""Training of demucs_rr models (the Demucs v2 recipe of the paper).

Modules, from the edge inwards:

- :mod:`.cli`: the ``train`` and ``export`` commands;
- :mod:`.config`: ``conf/`` YAML + ``key=value`` overrides -> frozen :class:`TrainConfig`;
- :mod:`.loop`: ``fit`` (data checks, epochs, checkpoints, metrics), ``run_epoch``,
  ``train_step``;
- :mod:`.state`: :class:`TrainState` and how it is built (model, Adam, schedule, AMP, EMA);
- :mod:`.validate`: validation through the separation engine, nSDR, best-state choice;
- :mod:`.augment`, :mod:`.losses`, :mod:`.ema`, :mod:`.checkpoint`, :mod:`.distributed`.

Nothing is imported here, so ``import demucs_rr.train`` stays cheap.
"""
