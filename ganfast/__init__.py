"""ganfast: fast, stable GAN training for PyTorch."""
from . import ops as _ops  # defines the ganfast:: ops and loads the extension  # noqa: F401
from . import backends, losses
from . import nn
from . import penalties  # noqa: F401
from .backends import BackendUnavailableError, get_backend, set_backend, use_backend
from .train import Trainer

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "backends", "get_backend", "losses", "set_backend", "Trainer", "use_backend",
           "__version__"]
