"""The standard run's former module: :mod:`handlers.training` (``training`` and ``main``) under
its old name, so ``from handlers.standard import main`` keeps working."""
from handlers.training import Hook, main, training

__all__ = ["Hook", "main", "training"]
