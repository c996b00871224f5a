"""Residual add then LayerNorm (affine): returns layer_norm(x + residual), float32."""

import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, eps=1e-5)
        # random instead of ones/zeros so that the affine step shows in the output
        nn.init.uniform_(self.norm.weight, 0.5, 1.5)
        nn.init.uniform_(self.norm.bias, -0.5, 0.5)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        # only the normalized sum is returned (the pre-norm transformer block's updated residual
        # stream is not an output here)
        return self.norm(x + residual)


batch_size = 8192
hidden = 8192


def get_inputs():
    return [torch.randn(batch_size, hidden), torch.randn(batch_size, hidden)]


def get_init_inputs():
    return [hidden]


forge_name = "add_layer_norm"
forge_dtype = "float32"
forge_input_sets = [
    {"name": "tiny", "cpu": True, "batch_size": 7, "hidden": 127},
    {"name": "odd", "cpu": True, "batch_size": 31, "hidden": 1000},
    {"name": "odd_wide", "batch_size": 1025, "hidden": 5120},
    # 8192 x 8192 fp32: two inputs read (512 MiB) + one output written (256 MiB), ~0.24 ms at
    # 3.35 TB/s (H100)
    {"name": "large", "batch_size": 8192, "hidden": 8192},
]
forge_shape_buckets = {"batch_size": "pow2", "hidden": "exact"}


def forge_flops(batch_size, hidden):
    # the add (1) plus layer_norm's ~8 per element
    return 9 * batch_size * hidden


def forge_bytes(batch_size, hidden):
    # read x and residual, write y (4 bytes each), read weight and bias once
    return 4 * (3 * batch_size * hidden + 2 * hidden)
