"""Rotary position embedding (GPT-NeoX/Llama half-split) of q [B, S, H, D] by cos/sin [S, D/2]."""

import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # the rotate-half convention: feature i pairs with feature i + D/2 (not the interleaved
        # GPT-J pairing 2i, 2i+1); cos/sin rows are positions, broadcast over batch and heads
        half = q.shape[-1] // 2
        q1, q2 = q[..., :half], q[..., half:]
        c = cos[None, :, None, :]
        s = sin[None, :, None, :]
        return torch.cat([q1 * c - q2 * s, q2 * c + q1 * s], dim=-1)


batch_size = 8
seq_len = 4096
num_heads = 32
head_dim = 128  # must be even in every input set


def get_inputs():
    q = torch.randn(batch_size, seq_len, num_heads, head_dim)
    # real tables: angle[pos, i] = pos * 10000^(-2i/D), as Llama builds them
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return [q, angles.cos(), angles.sin()]


def get_init_inputs():
    return []


forge_name = "rotary"
forge_dtype = "float32"
# All three distributions, cos and sin included. The op is linear in cos and sin, so the output
# is well defined for any table, and perturbing the tables ("heavy_tailed", "outliers") catches
# a kernel that ignores its cos/sin inputs and recomputes them from positions (it would match
# only the unperturbed "normal" tables). "normal" keeps the real tables as built above.
forge_distributions = ["normal", "heavy_tailed", "outliers"]
forge_input_sets = [
    {"name": "tiny", "cpu": True, "batch_size": 1, "seq_len": 7, "num_heads": 3, "head_dim": 16},
    # head_dim 24: half = 12 is not a power of two
    {"name": "odd", "cpu": True, "batch_size": 2, "seq_len": 33, "num_heads": 5, "head_dim": 24},
    {"name": "odd_large", "batch_size": 3, "seq_len": 1000, "num_heads": 12, "head_dim": 80},
    # 8 x 4096 x 32 x 128 fp32 = 512 MiB read + 512 MiB written, ~0.32 ms at 3.35 TB/s (H100)
    {"name": "large", "batch_size": 8, "seq_len": 4096, "num_heads": 32, "head_dim": 128},
]
forge_shape_buckets = {
    "batch_size": "pow2",
    "seq_len": "pow2",
    "num_heads": "exact",
    "head_dim": "exact",
}


def forge_flops(batch_size, seq_len, num_heads, head_dim):
    # every output element is two multiplies and an add/subtract
    return 3 * batch_size * seq_len * num_heads * head_dim


def forge_bytes(batch_size, seq_len, num_heads, head_dim):
    # fp32: read q once, write the output once, read the cos and sin tables [S, D/2] once
    return 4 * (2 * batch_size * seq_len * num_heads * head_dim + seq_len * head_dim)
