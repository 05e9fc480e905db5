"""Attachable plugins for a faceignite trainer: each module has an ``attach(trainer, ...)``.

Handlers exchange results through ``trainer.state.metrics`` (e.g. ``train_loss``,
``val_accuracy``, ``lfw_accuracy``), so a tracker or a checkpoint can read what a validator wrote.
"""
