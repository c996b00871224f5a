"""Measure the GPU's two ceilings for the roofline: device copy bandwidth (bytes read + written
per second) and matrix-product FLOP rates through cuBLAS (fp32 with TF32 off, fp32 with TF32
on, and bf16).

    python bench/ceilings.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch


def _median_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    copy_ms = _median_ms(lambda: dst.copy_(src))
    out = {"gpu": torch.cuda.get_device_name(), "copy_bytes_s": 2 * src.numel() / (copy_ms / 1e3)}
    n = 8192
    products = (
        (torch.float32, False, "fp32_flops_s"),
        (torch.float32, True, "tf32_flops_s"),
        (torch.bfloat16, False, "bf16_flops_s"),
    )
    for dtype, tf32, key in products:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        ms = _median_ms(lambda a=a, b=b: a @ b, reps=10)
        out[key] = 2 * n**3 / (ms / 1e3)
    torch.backends.cuda.matmul.allow_tf32 = False
    print(
        f"{out['gpu']}: copy {out['copy_bytes_s'] / 1e12:.2f} TB/s, fp32 {out['fp32_flops_s'] / 1e12:.1f} TFLOP/s, "
        f"tf32 {out['tf32_flops_s'] / 1e12:.0f} TFLOP/s, bf16 {out['bf16_flops_s'] / 1e12:.0f} TFLOP/s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
