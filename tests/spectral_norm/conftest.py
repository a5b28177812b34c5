import os

# Triton kernels run on CPU tensors through the interpreter (must be set before triton is imported).
os.environ.setdefault("TRITON_INTERPRET", "1")
