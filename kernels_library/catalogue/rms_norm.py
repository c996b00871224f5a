"""RMSNorm over the last dimension of a 2-D float32 tensor: x * rsqrt(mean(x^2) + 1e-6) * w."""

import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.eps = 1e-6
        # random rather than ones, so that a kernel skipping the weight is caught
        self.weight = nn.Parameter(torch.empty(hidden).uniform_(0.5, 1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # written out by hand (as in Llama) rather than F.rms_norm, so any torch >= 2.4 runs it
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


batch_size = 16384
hidden = 8192


def get_inputs():
    return [torch.randn(batch_size, hidden)]


def get_init_inputs():
    return [hidden]


forge_name = "rms_norm"
forge_dtype = "float32"
forge_input_sets = [
    {"name": "tiny", "cpu": True, "batch_size": 7, "hidden": 127},
    {"name": "odd", "cpu": True, "batch_size": 33, "hidden": 1000},
    {"name": "odd_wide", "batch_size": 1025, "hidden": 5120},
    # 16384 x 8192 fp32: 512 MiB read + 512 MiB written, ~0.32 ms at 3.35 TB/s (H100)
    {"name": "large", "batch_size": 16384, "hidden": 8192},
]
# aten::rms_norm(input, normalized_shape, weight, eps) exists since torch 2.4; its eps defaults to
# finfo(dtype).eps, not 1e-6, so a library mapping must pass eps through to the kernel.
forge_aten = "aten::rms_norm"
forge_shape_buckets = {"batch_size": "pow2", "hidden": "exact"}


def forge_flops(batch_size, hidden):
    # square, add (mean of squares), multiply by rsqrt, multiply by weight: 4 per element
    return 4 * batch_size * hidden


def forge_bytes(batch_size, hidden):
    # read x, write y (4 bytes each), read the weight once
    return 4 * (2 * batch_size * hidden + hidden)
