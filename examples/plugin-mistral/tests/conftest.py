import os

import torch

if not torch.cuda.is_available():
    # the triton parity setting runs triton's interpreter on a CPU; set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
