"""PyTorch under a precision policy, for the trusted side: the baselines run under it, and the
reference runs under it once per seed to measure how far the policy's own rounding moves it.
Under `strict` the reference's own rounding is measured against a float64 copy of it
(`float64_copy`, `in_float64`).

On the GPU the baselines run under the real thing: cuBLAS/cuDNN TF32 flags, `torch.autocast`
in bf16/fp16. For `tf32` the reference's own error is also measured with TF32 emulated
(`Tf32Emulation`): the operands of every matrix product and convolution cut to TF32's 10-bit
mantissa, the product accumulated in fp32. Cut, not rounded: tensor cores fed fp32 values keep
their top 19 bits (Triton's `tl.dot` feeds them so), and that errs 2-7x more than rounding
(`cvt.rna.tf32.f32`) on long products, because the cut biases every product toward zero.
Emulating it does not depend on whether cuBLAS picks a TF32 kernel for a shape. On the CPU
there is no TF32: emulation only. bf16/fp16 autocast is real on the CPU too.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from forge.evaluator.precision import POLICIES, Policy

_PRODUCT_OPERANDS = {
    torch.ops.aten.mm.default: (0, 1),
    torch.ops.aten.addmm.default: (1, 2),
    torch.ops.aten.bmm.default: (0, 1),
    torch.ops.aten.baddbmm.default: (1, 2),
    torch.ops.aten.convolution.default: (0, 1),
}
"""Matrix products and convolutions (as they reach ATen after decomposition: `matmul`,
`linear` and `conv2d` arrive as these), and which of their arguments are rounded."""


def truncate_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 values cut to TF32 (1 sign, 8 exponent, 10 mantissa bits, the 13 low bits
    dropped: toward zero), kept in fp32."""
    if x.dtype != torch.float32:
        return x
    cut = x.contiguous().view(torch.int32) & ~0x1FFF
    return torch.where(torch.isfinite(x), cut.view(torch.float32), x)


class Tf32Emulation(TorchDispatchMode):
    """Cuts the fp32 operands of matrix products and convolutions to TF32."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        operands = _PRODUCT_OPERANDS.get(func)
        if operands is not None:
            args = tuple(
                truncate_to_tf32(a) if i in operands and isinstance(a, torch.Tensor) else a
                for i, a in enumerate(args)
            )
        return func(*args, **kwargs)


@contextlib.contextmanager
def policy_math(policy: Policy, device: str, emulate_tf32: bool = False) -> Iterator[None]:
    """PyTorch computes under `policy` inside (TF32 emulated on the CPU, or when asked); the
    TF32 flags are set back on exit."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = policy.tf32
    torch.backends.cudnn.allow_tf32 = policy.tf32
    try:
        with contextlib.ExitStack() as stack:
            if policy.autocast:
                stack.enter_context(torch.autocast(device, dtype=getattr(torch, policy.autocast)))
            elif policy.tf32 and (emulate_tf32 or device == "cpu"):
                stack.enter_context(Tf32Emulation())
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def under_policy(fn: Callable, policy_name: str, device: str) -> Callable:
    """`fn` called under the policy (strict: `fn` itself, the evaluation's default flags)."""
    policy = POLICIES[policy_name]
    if policy.name == "strict":
        return fn

    def call(*args):
        with policy_math(policy, device):
            return fn(*args)

    return call


FLOAT64_FAILURES = (RuntimeError, TypeError, ValueError, AssertionError)
"""What the problem's own code may raise when copied or run in float64, a dtype it was not
written for: an op without float64 kernels, a product of a float64 tensor with a float32 one it
made itself, a dtype assertion, a module that cannot be deep-copied, running out of memory
(`NotImplementedError` and `torch.OutOfMemoryError` are RuntimeErrors). The strict atol is then
kept, with a note."""


def float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` with its floating-point parameters and buffers in float64: running
    it leaves the model's own state (BatchNorm running statistics in training mode, any buffer
    its forward updates) as it was."""
    return copy.deepcopy(model).to(torch.float64)


def in_float64(values: list) -> list:
    """Copies of `values`' tensors, the floating-point ones in float64 (the problem's values
    exactly: every float32, float16 and bfloat16 value is a float64 value); a forward that
    writes into its inputs writes into these."""
    return [
        (x.to(torch.float64, copy=True) if x.is_floating_point() else x.clone())
        if isinstance(x, torch.Tensor)
        else x
        for x in values
    ]
