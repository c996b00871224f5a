"""SwiGLU gate in bfloat16: x [tokens, 2*dim] -> silu(x[:, :dim]) * x[:, dim:]."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]


num_tokens = 8192
dim = 14336


def get_inputs():
    # gate and up projections side by side, as a fused gate_up Linear produces them
    return [torch.randn(num_tokens, 2 * dim)]


def get_init_inputs():
    return []


forge_name = "silu_and_mul"
# LLM MLPs run this in bf16; the reference rounds twice (after silu, after the product), so a
# kernel computing in fp32 and rounding once differs by <= ~1.5 bf16 ulps (0.6%), within 1e-2
forge_dtype = "bfloat16"
forge_input_sets = [
    {"name": "tiny", "cpu": True, "num_tokens": 7, "dim": 127},
    {"name": "odd", "cpu": True, "num_tokens": 33, "dim": 100},
    {"name": "odd_large", "num_tokens": 1000, "dim": 11008},
    # Llama-3-8B MLP width: 8192 x 28672 bf16 read (448 MiB) + 8192 x 14336 written (224 MiB),
    # ~0.21 ms at 3.35 TB/s (H100)
    {"name": "large", "num_tokens": 8192, "dim": 14336},
]
forge_shape_buckets = {"num_tokens": "pow2", "dim": "exact"}


def forge_flops(num_tokens, dim):
    # silu = a * sigmoid(a): negate, exp, add, divide, multiply; then multiply by b: 6 per output
    return 6 * num_tokens * dim


def forge_bytes(num_tokens, dim):
    # read [tokens, 2*dim] once and write [tokens, dim] once, 2 bytes each
    return 2 * (2 * num_tokens * dim + num_tokens * dim)
