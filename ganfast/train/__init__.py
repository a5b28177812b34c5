"""The trainer: `Trainer` (the step, its state and sampling), the options of a step (`StepConfig`),
its stability monitor and checkpoint files."""
from .checkpoint import CheckpointError, ResumeMismatchError
from .config import LossInputs, StepConfig
from .monitor import DivergenceError, StabilityMonitor
from .trainer import Trainer

__all__ = ["CheckpointError", "DivergenceError", "LossInputs", "ResumeMismatchError", "StabilityMonitor", "StepConfig",
           "Trainer"]
