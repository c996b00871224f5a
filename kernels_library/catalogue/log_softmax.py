"""Row-wise log-softmax over the last dimension of a 2-D float32 tensor."""

import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x, dim=-1)


batch_size = 16384
dim = 8192


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return []


forge_name = "log_softmax"
forge_dtype = "float32"
forge_input_sets = [
    {"name": "tiny", "cpu": True, "batch_size": 7, "dim": 127},
    {"name": "odd", "cpu": True, "batch_size": 33, "dim": 1000},
    # rows of 32769 floats (128 KiB) do not fit one program's registers: tests looped kernels
    {"name": "wide", "batch_size": 129, "dim": 32769},
    # 16384 x 8192 fp32: 512 MiB read + 512 MiB written, ~0.32 ms at 3.35 TB/s (H100)
    {"name": "large", "batch_size": 16384, "dim": 8192},
]
forge_aten = "aten::_log_softmax"
forge_shape_buckets = {"batch_size": "pow2", "dim": "exact"}


def forge_flops(batch_size, dim):
    # max, subtract, exp, sum, then one subtract of the log-sum-exp: ~5 operations per element
    # (one log per row is negligible)
    return 5 * batch_size * dim


def forge_bytes(batch_size, dim):
    # read x once, write y once, 4 bytes each
    return 2 * 4 * batch_size * dim
