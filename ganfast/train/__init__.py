"""The trainer: `Trainer` (step, fit, checkpoints, sampling), its stability monitor and checkpoint files."""
from .checkpoint import CheckpointError
from .monitor import DivergenceError, StabilityMonitor
from .trainer import Trainer

__all__ = ["CheckpointError", "DivergenceError", "StabilityMonitor", "Trainer"]
