"""Modules and module utilities: spectral normalization (a drop-in for PyTorch's) and the building
blocks of class-conditional GANs (a projection-discriminator head, conditional batch norm)."""
from .conditional import ConditionalBatchNorm2d, ProjectionHead, check_labels
from .spectral_norm import (DEFAULT_TYPES, SpectralNorm, apply_spectral_norm, remove_spectral_norm, sigma_extremes,
                            sn_step, spectral_norm, spectral_norms)

__all__ = ["ConditionalBatchNorm2d", "DEFAULT_TYPES", "ProjectionHead", "SpectralNorm", "apply_spectral_norm",
           "check_labels", "remove_spectral_norm", "sigma_extremes", "sn_step", "spectral_norm", "spectral_norms"]
