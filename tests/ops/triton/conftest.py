"""Run the Triton kernels on the CPU interpreter; must be set before triton is first imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
