"""Non-causal scaled dot-product attention, q, k, v [B, H, S, D] in float16."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # softmax(q @ k^T / sqrt(D)) @ v, no mask, no dropout
        return F.scaled_dot_product_attention(q, k, v)


batch_size = 4
num_heads = 16
seq_len = 4096
head_dim = 128


def get_inputs():
    shape = (batch_size, num_heads, seq_len, head_dim)
    # q at temperature 2: scores ~ N(0, 4) instead of N(0, 1). With plain randn q, each query
    # spreads its weight over all 4096 keys and the output std is ~0.026, under 3x atol (1e-2),
    # so an all-zeros output nearly passes; at temperature 2 the std is ~0.10 at S=4096 and
    # ~0.5 at S=33 (measured), like the peaked attention of trained models.
    q = 2.0 * torch.randn(shape)
    return [q, torch.randn(shape), torch.randn(shape)]


def get_init_inputs():
    return []


forge_name = "sdpa"
forge_dtype = "float16"
forge_input_sets = [
    {"name": "tiny", "cpu": True, "batch_size": 1, "num_heads": 2, "seq_len": 16, "head_dim": 16},
    # head_dim 24 is not a power of two; seq_len 33 leaves a ragged last key block
    {"name": "odd", "cpu": True, "batch_size": 2, "num_heads": 3, "seq_len": 33, "head_dim": 24},
    {"name": "odd_large", "batch_size": 3, "num_heads": 12, "seq_len": 1000, "head_dim": 96},
    # 4 * B*H*S^2*D = 4 * 4*16*4096^2*128 = 550 GFLOP, ~0.9 ms at ~600 TFLOP/s (H100)
    {"name": "large", "batch_size": 4, "num_heads": 16, "seq_len": 4096, "head_dim": 128},
]
forge_aten = "aten::scaled_dot_product_attention"
forge_shape_buckets = {
    "batch_size": "pow2",
    "num_heads": "exact",
    "seq_len": "pow2",
    "head_dim": "exact",
}


def forge_flops(batch_size, num_heads, seq_len, head_dim):
    # two matmuls (q @ k^T and p @ v) of 2*S*S*D each per head; the softmax (~4*S*S) is small
    # next to them for D >= 16 and left out, as FlashAttention counts
    return 4 * batch_size * num_heads * seq_len * seq_len * head_dim


def forge_bytes(batch_size, num_heads, seq_len, head_dim):
    # read q, k, v once and write the output once, 2 bytes each
    return 4 * 2 * batch_size * num_heads * seq_len * head_dim
