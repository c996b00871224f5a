"""Exact (erf) GELU, elementwise, on a 2-D float32 tensor."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exact form 0.5 * x * (1 + erf(x / sqrt(2))), F.gelu's default (approximate="none");
        # the tanh approximation differs from it by up to ~5e-4, far above the fp32 tolerance,
        # so a candidate must use erf too
        return F.gelu(x)


batch_size = 8192
dim = 16384


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return []


forge_name = "gelu"
forge_dtype = "float32"
forge_input_sets = [
    {"name": "tiny", "cpu": True, "batch_size": 7, "dim": 127},
    {"name": "odd", "cpu": True, "batch_size": 33, "dim": 129},
    {"name": "odd_large", "batch_size": 1000, "dim": 10001},
    # 8192 x 16384 fp32: 512 MiB read + 512 MiB written, ~0.32 ms at 3.35 TB/s (H100)
    {"name": "large", "batch_size": 8192, "dim": 16384},
]
forge_aten = "aten::gelu"
# elementwise: every dimension is batch-like
forge_shape_buckets = {"batch_size": "pow2", "dim": "pow2"}


def forge_flops(batch_size, dim):
    # scale by 1/sqrt(2), erf (counted as one operation), add 1, multiply by x, multiply by 0.5
    return 5 * batch_size * dim


def forge_bytes(batch_size, dim):
    # read x once, write y once, 4 bytes each
    return 2 * 4 * batch_size * dim
