"""LayerNorm over the last dimension of a 2-D float32 tensor, with affine weight and bias."""

import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, eps=1e-5)
        # nn.LayerNorm starts at weight=1, bias=0, which a kernel ignoring the affine step would
        # match exactly; random values make weight and bias observable in the output.
        nn.init.uniform_(self.norm.weight, 0.5, 1.5)
        nn.init.uniform_(self.norm.bias, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


batch_size = 16384
hidden = 8192


def get_inputs():
    return [torch.randn(batch_size, hidden)]


def get_init_inputs():
    return [hidden]


forge_name = "layer_norm"
forge_dtype = "float32"
forge_input_sets = [
    {"name": "tiny", "cpu": True, "batch_size": 7, "hidden": 127},
    {"name": "odd", "cpu": True, "batch_size": 33, "hidden": 1000},
    {"name": "odd_wide", "batch_size": 1025, "hidden": 5120},
    # 16384 x 8192 fp32: 512 MiB read + 512 MiB written, ~0.32 ms at 3.35 TB/s (H100)
    {"name": "large", "batch_size": 16384, "hidden": 8192},
]
forge_aten = "aten::native_layer_norm"
forge_shape_buckets = {"batch_size": "pow2", "hidden": "exact"}


def forge_flops(batch_size, hidden):
    # mean (add), variance (subtract, square, add), normalize (subtract, multiply),
    # affine (multiply, add): ~8 operations per element; per-row rsqrt negligible
    return 8 * batch_size * hidden


def forge_bytes(batch_size, hidden):
    # read x, write y (4 bytes each), read weight and bias once
    return 4 * (2 * batch_size * hidden + 2 * hidden)
