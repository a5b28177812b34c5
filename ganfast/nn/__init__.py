"""Modules and module utilities: spectral normalization (a drop-in for PyTorch's)."""
from .spectral_norm import (DEFAULT_TYPES, SpectralNorm, apply_spectral_norm, remove_spectral_norm, sn_step,
                            spectral_norm, spectral_norms)

__all__ = ["DEFAULT_TYPES", "SpectralNorm", "apply_spectral_norm", "remove_spectral_norm", "sn_step",
           "spectral_norm", "spectral_norms"]
