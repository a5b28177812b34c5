"""ganfast: fast, stable GAN training for PyTorch."""
from . import ops as _ops  # defines the ganfast:: ops and loads the extension  # noqa: F401
from . import backends, losses, nn, penalties
from .backends import BackendUnavailableError, get_backend, set_backend, use_backend
from .train import Trainer

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "Trainer", "backends", "get_backend", "losses", "nn", "penalties",
           "set_backend", "use_backend", "__version__"]
