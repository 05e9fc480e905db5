"""Attachable plugins for a faceignite trainer: each module has an ``attach(trainer, ...)``.

Handlers exchange results through ``trainer.state.metrics`` (e.g. ``train_loss``,
``val_accuracy``, ``lfw_accuracy``, ``<target>_accuracy``, ``lfw_roc_figure``) and events (``events.ValidationEvents``,
``faceignite.engine.TrainerEvents``), so a tracker or a checkpoint can read what a validator
wrote; they share no other state.  :mod:`handlers.training` attaches them in their order (the run
control, :class:`handlers.control.RunControl`, around the others).
"""
