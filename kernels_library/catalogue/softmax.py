"""Row-wise softmax over the last dimension of a 2-D float32 tensor."""

import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1)


batch_size = 4096
dim = 8192


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return []


forge_name = "softmax"
forge_dtype = "float32"
forge_input_sets = [
    {"name": "tiny", "cpu": True, "batch_size": 7, "dim": 127},
    {"name": "odd", "cpu": True, "batch_size": 33, "dim": 1000},
    {"name": "wide", "batch_size": 129, "dim": 32769},
    {"name": "large", "batch_size": 4096, "dim": 8192},
]
forge_aten = "aten::_softmax"
forge_shape_buckets = {"batch_size": "pow2", "dim": "exact"}


def forge_flops(batch_size, dim):
    # max, subtract, exp, sum, divide: ~5 operations per element
    return 5 * batch_size * dim


def forge_bytes(batch_size, dim):
    # read x once, write y once
    return 2 * 4 * batch_size * dim
