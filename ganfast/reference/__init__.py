"""Plain-PyTorch reference implementations: the oracle every kernel is tested against, and the
backend that always runs."""
