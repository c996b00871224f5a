"""Linear layer (x @ W^T + b) followed by exact GELU, in bfloat16."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exact erf GELU (approximate="none"), as in the gelu problem
        return F.gelu(self.linear(x))


batch_size = 4096
in_features = 4096
out_features = 8192


def get_inputs():
    return [torch.randn(batch_size, in_features)]


def get_init_inputs():
    return [in_features, out_features]


forge_name = "matmul_bias_gelu"
# bf16 inputs and weights, fp32 accumulation expected; the reference also rounds the Linear
# output to bf16 before GELU, which a fused kernel skips: <= ~1 bf16 ulp apart, within 1e-2
forge_dtype = "bfloat16"
forge_input_sets = [
    {"name": "tiny", "cpu": True, "batch_size": 7, "in_features": 33, "out_features": 17},
    {"name": "odd", "cpu": True, "batch_size": 33, "in_features": 127, "out_features": 129},
    {"name": "odd_large", "batch_size": 1000, "in_features": 2048, "out_features": 3000},
    # 2 * 4096 * 4096 * 8192 = 275 GFLOP, ~0.35 ms at ~790 TFLOP/s bf16 (H100)
    {"name": "large", "batch_size": 4096, "in_features": 4096, "out_features": 8192},
]
forge_shape_buckets = {"batch_size": "pow2", "in_features": "exact", "out_features": "exact"}


def forge_flops(batch_size, in_features, out_features):
    # 2*M*N*K for the product, then per output: add bias (1) and GELU (5, erf counted as one)
    return 2 * batch_size * in_features * out_features + 6 * batch_size * out_features


def forge_bytes(batch_size, in_features, out_features):
    # bf16 (2 bytes): read x [M, K], W [N, K] and b [N] once, write y [M, N] once
    m, k, n = batch_size, in_features, out_features
    return 2 * (m * k + n * k + n + m * n)
