"""Triton kernels and their launchers. Imported only when the triton backend runs."""
