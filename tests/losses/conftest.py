"""The `capability` fixture: each CPU kernel capability copy in turn (see cpu_paths.py)."""
from .cpu_paths import capability

__all__ = ["capability"]
