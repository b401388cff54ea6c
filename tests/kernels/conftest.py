"""Without CUDA, Triton kernels run under its interpreter on CPU tensors. TRITON_INTERPRET
must be set before triton decorates a kernel, i.e. before any kernels module is imported:
conftest files load first."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
