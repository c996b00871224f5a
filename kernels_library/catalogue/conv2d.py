"""2-D convolution, 3x3 kernel, stride 1, padding 1, with bias, on float32 NCHW input."""

import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


batch_size = 32
in_channels = 128
out_channels = 128
height = 56
width = 56


def get_inputs():
    return [torch.randn(batch_size, in_channels, height, width)]


def get_init_inputs():
    return [in_channels, out_channels]


forge_name = "conv2d"
forge_dtype = "float32"
# Loosened from the fp32 default 1e-4: each output sums 9 * in_channels products (1152 at 128
# channels) and cuDNN may pick Winograd or FFT algorithms for 3x3, whose transforms lose a few
# more bits than direct summation; a correct kernel with another summation order or algorithm
# can differ by ~1e-4 relative, while a wrong one (missing tap, bad padding) is off by O(0.1).
forge_atol = 1e-3
forge_rtol = 1e-3
forge_input_sets = [
    {
        "name": "tiny",
        "cpu": True,
        "batch_size": 2,
        "in_channels": 3,
        "out_channels": 5,
        "height": 7,
        "width": 9,
    },
    {
        "name": "odd",
        "cpu": True,
        "batch_size": 1,
        "in_channels": 8,
        "out_channels": 12,
        "height": 13,
        "width": 17,
    },
    {
        "name": "odd_large",
        "batch_size": 3,
        "in_channels": 64,
        "out_channels": 96,
        "height": 127,
        "width": 129,
    },
    # ResNet stage-2 shape: 2 * 32*128*56*56 * 128*9 = 29.6 GFLOP, ~0.6 ms at ~50 TFLOP/s fp32
    # (TF32 off)
    {
        "name": "large",
        "batch_size": 32,
        "in_channels": 128,
        "out_channels": 128,
        "height": 56,
        "width": 56,
    },
]
# No forge_aten: aten::conv2d covers every kernel size, stride, padding, dilation and group
# count, and a kernel for this one configuration must not be substituted for all of them.
forge_shape_buckets = {
    "batch_size": "pow2",
    "in_channels": "exact",
    "out_channels": "exact",
    "height": "pow2",
    "width": "pow2",
}


def forge_flops(batch_size, in_channels, out_channels, height, width):
    # one multiply-add (2 FLOPs) per output element per input channel per tap, plus the bias
    outputs = batch_size * out_channels * height * width
    return 2 * outputs * in_channels * 9 + outputs


def forge_bytes(batch_size, in_channels, out_channels, height, width):
    # fp32: read x, the weight [Cout, Cin, 3, 3] and the bias once, write y once
    x = batch_size * in_channels * height * width
    y = batch_size * out_channels * height * width
    return 4 * (x + out_channels * in_channels * 9 + out_channels + y)
