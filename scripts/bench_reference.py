#!/usr/bin/env python3
"""PyTorch reference timings for examples/bench_models.rs (same rows, same shapes, fp32).

Rerun (same machine and thread count as the Rust run; `--device cuda` on a GPU machine, where the
timings synchronise the device like the Rust benchmark does):
    ~/.cache/cm-venv/bin/python scripts/bench_reference.py [--threads 2] [--runs 5] [--sd15-64] [--device cpu|cuda]
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = Path(__file__).resolve().parent.parent


DEVICE = "cpu"


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, runs):
    fn()
    sync()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sd15-64", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    d = torch.device(DEVICE)
    torch.set_num_threads(args.threads)
    # fp32 means fp32 on the GPU too (no TF32 matmuls), as in the Rust benchmark.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__}, device {DEVICE}, threads {torch.get_num_threads()}, runs {args.runs} (median)")
    print("| model | input | median (s) |\n|---|---|---|")

    tiny = UNet2DConditionModel.from_config(json.loads((ROOT / "tests/fixtures/tiny-sd/unet/config.json").read_text())).eval().to(d)
    t = timed(lambda: tiny(torch.ones(1, 4, 16, 16, device=d), torch.tensor([500.0], device=d), torch.ones(1, 77, 32, device=d)), args.runs)
    print(f"| tiny UNet (fixture) | 1x4x16x16 | {t:.4f} |")

    sd15 = UNet2DConditionModel.from_config(json.loads((ROOT / "assets/sd15/unet/config.json").read_text())).eval().to(d)
    t = timed(lambda: sd15(torch.ones(1, 4, 32, 32, device=d), torch.tensor([500.0], device=d), torch.ones(1, 77, 768, device=d)), args.runs)
    print(f"| SD1.5 UNet | 1x4x32x32 | {t:.3f} |")
    if args.sd15_64:
        t = timed(lambda: sd15(torch.ones(1, 4, 64, 64, device=d), torch.tensor([500.0], device=d), torch.ones(1, 77, 768, device=d)), args.runs)
        print(f"| SD1.5 UNet | 1x4x64x64 | {t:.3f} |")
    del sd15

    config = CLIPTextConfig(**json.loads((ROOT / "assets/sd15/text_encoder/config.json").read_text()))
    encoder = CLIPTextModel(config).eval().to(d)
    ids = torch.zeros(1, 77, dtype=torch.long, device=d)
    t = timed(lambda: encoder(ids), args.runs)
    print(f"| SD1.5 text encoder | 1x77 tokens | {t:.4f} |")


if __name__ == "__main__":
    main()
