"""The ganfast:: ops. Each family module defines its schemas on import; the extension is loaded
after all of them, so that its kernels register against defined schemas."""
from . import losses  # noqa: F401
from . import spectral_norm  # noqa: F401
from . import penalties  # noqa: F401
from . import augment  # noqa: F401
from .. import backends as _backends
from ._library import ganfast_ops  # noqa: F401

_backends.load_extension()
