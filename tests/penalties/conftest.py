"""The `capability` fixture: each CPU kernel capability copy in turn (see tests/losses/cpu_paths.py)."""
from ..losses.cpu_paths import capability

__all__ = ["capability"]
