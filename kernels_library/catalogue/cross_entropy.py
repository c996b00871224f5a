"""Mean cross-entropy loss of float32 logits [N, C] against int64 class targets [N]."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # a 0-dim tensor: mean over rows of logsumexp(logits[i]) - logits[i, targets[i]]
        return F.cross_entropy(logits, targets)


batch_size = 4096
num_classes = 50257


def get_inputs():
    # targets are integers, which the harness never perturbs or casts; every target is a valid
    # class (no ignore_index = -100 entries), so the mean is over all batch_size rows
    logits = torch.randn(batch_size, num_classes)
    targets = torch.randint(0, num_classes, (batch_size,), dtype=torch.int64)
    return [logits, targets]


def get_init_inputs():
    return []


forge_name = "cross_entropy"
forge_dtype = "float32"
forge_input_sets = [
    {"name": "tiny", "cpu": True, "batch_size": 7, "num_classes": 129},
    {"name": "odd", "cpu": True, "batch_size": 33, "num_classes": 1000},
    {"name": "odd_large", "batch_size": 127, "num_classes": 32003},
    # GPT-2 vocabulary: 4096 x 50257 fp32 logits = 785 MiB read once, ~0.25 ms at 3.35 TB/s
    {"name": "large", "batch_size": 4096, "num_classes": 50257},
    # Llama-3 vocabulary: 2048 x 128256 fp32 logits = 1002 MiB
    {"name": "vocab128k", "batch_size": 2048, "num_classes": 128256},
]
forge_aten = "aten::cross_entropy_loss"
forge_shape_buckets = {"batch_size": "pow2", "num_classes": "exact"}


def forge_flops(batch_size, num_classes):
    # per logit: max, subtract, exp, add (log-sum-exp); per row a log and a subtract, then the
    # mean over rows (negligible next to 4 per logit)
    return 4 * batch_size * num_classes + 3 * batch_size


def forge_bytes(batch_size, num_classes):
    # read the logits (4 bytes) and targets (8 bytes) once, write one float
    return 4 * batch_size * num_classes + 8 * batch_size + 4
