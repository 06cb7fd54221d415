"""genforge: forge generative models end to end, from a laptop CPU to many GPUs."""

import os

# On a small shared CPU, PyTorch's OpenMP threads spin-wait and collapse when other work runs
# (measured: a small step 5.9x slower with 2 threads). Passive waiting fixes it; this must be set
# before torch is imported, so the package does it first (a user's own setting wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
