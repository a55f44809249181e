#!/usr/bin/env python3
"""PyTorch/diffusers reference timings for examples/bench_models.rs: the same rows, shapes, dtype and
random-weight SD1.5 configs, medians of N runs after one warm-up, and each row's peak memory
measured the same way as the Rust benchmark (peak RSS on the CPU; the GPU's used memory from a
background `nvidia-smi -lms 50` on CUDA, plus torch's own allocator peak as a note).

Rerun (same machine, thread count and dtype as the Rust run):
    ~/.cache/cm-venv/bin/python scripts/bench_reference.py [--threads 2] [--runs 5] [--sd15-64]
        [--rows tiny,te,...] [--device cpu|cuda] [--dtype f32|f16|bf16] [--tf32]

fp32 means strict fp32 (TF32 off) unless `--tf32` is given; Burn's CUDA matmuls run in TF32-like
precision (docs/benchmarks.md), so `--tf32` is the like-for-like GPU comparison.
"""
import argparse
import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
ALL_ROWS = ["tiny", "te", "unet32", "unet32x2", "unet64", "unet64x2", "vae512", "sample512"]
LARGE_ROWS = ["unet64", "unet64x2", "vae512", "sample512"]
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


class PeakMemory:
    """Peak RSS (CPU) or the GPU's used memory polled by nvidia-smi (CUDA), reset per row."""

    def __init__(self):
        self.peak_mib = 0
        self.proc = None
        if DEVICE == "cuda":
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0", "-lms", "50"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.peak_mib = max(self.peak_mib, int(line.strip()))
            except ValueError:
                pass

    def reset(self):
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            time.sleep(0.15)
            self.peak_mib = 0
            time.sleep(0.1)
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def peak_bytes(self):
        if DEVICE == "cuda":
            time.sleep(0.1)
            return self.peak_mib * 2**20
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None


def human(n):
    return "-" if n is None else (f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB")


def config(path):
    return json.loads((ROOT / path).read_text())


def run_row(name, runs, d, dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    def unet_call(unet, batch, size, width):
        x = torch.ones(batch, 4, size, size, device=d, dtype=dtype)
        t = torch.full((batch,), 500.0, device=d)
        c = torch.ones(batch, 77, width, device=d, dtype=dtype)
        return lambda: unet(x, t, c)

    if name == "tiny":
        unet = UNet2DConditionModel.from_config(config("tests/fixtures/tiny-sd/unet/config.json")).eval().to(d, dtype)
        return "tiny UNet (fixture)", "1x4x16x16", timed(unet_call(unet, 1, 16, 32), runs), ""
    if name == "te":
        encoder = CLIPTextModel(CLIPTextConfig(**config("assets/sd15/text_encoder/config.json"))).eval().to(d, dtype)
        ids = torch.zeros(2, 77, dtype=torch.long, device=d)
        return "SD1.5 text encoder", "2x77 tokens", timed(lambda: encoder(ids), runs), ""
    if name.startswith("unet"):
        size = 32 if name.startswith("unet32") else 64
        batch = 2 if name.endswith("x2") else 1
        unet = UNet2DConditionModel.from_config(config("assets/sd15/unet/config.json")).eval().to(d, dtype)
        return "SD1.5 UNet", f"{batch}x4x{size}x{size}", timed(unet_call(unet, batch, size, 768), runs), ""
    if name == "vae512":
        vae = AutoencoderKL.from_config(config("assets/sd15/vae/config.json")).eval().to(d, dtype)
        z = torch.ones(1, 4, 64, 64, device=d, dtype=dtype)
        return "SD1.5 VAE decode", "1x4x64x64 -> 512 px", timed(lambda: vae.decode(z).sample, runs), ""
    if name == "sample512":
        # How LCM-LoRA students run in diffusers: the SD pipeline with the LCM scheduler, w = 1.
        from diffusers import LCMScheduler, StableDiffusionPipeline
        from transformers import CLIPTokenizer
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL.from_config(config("assets/sd15/vae/config.json")),
            text_encoder=CLIPTextModel(CLIPTextConfig(**config("assets/sd15/text_encoder/config.json"))),
            tokenizer=CLIPTokenizer.from_pretrained(str(ROOT / "assets/demo-teacher/tokenizer")),
            unet=UNet2DConditionModel.from_config(config("assets/sd15/unet/config.json")),
            scheduler=LCMScheduler.from_config(config("assets/sd15/scheduler_lcm/scheduler_config.json")),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        ).to(d, dtype)
        pipe.set_progress_bar_config(disable=True)
        t = timed(lambda: pipe("a photograph of an astronaut riding a horse", num_inference_steps=4,
                               guidance_scale=1.0, height=512, width=512, output_type="pt"), runs)
        return "4-step LCM sampling, 512 px", "1 image, no CFG", t, f"{1 / t:.2f} images/s"
    raise SystemExit(f"--rows: unknown row {name!r}; expected one of {', '.join(ALL_ROWS)}")


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sd15-64", action="store_true", help="also the 512 px rows")
    parser.add_argument("--rows", default="", help="comma-separated rows (overrides the default set)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions on the GPU")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    d = torch.device(DEVICE)
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    rows = [r for r in args.rows.split(",") if r] or [r for r in ALL_ROWS if args.sd15_64 or r not in LARGE_ROWS]
    memory = PeakMemory()
    what = "GPU memory used (nvidia-smi, includes the CUDA context)" if DEVICE == "cuda" else "peak RSS"
    print(f"torch {torch.__version__}, device {DEVICE}, dtype {args.dtype}{', TF32' if args.tf32 else ''}, "
          f"threads {torch.get_num_threads()}, runs {args.runs} (median); memory: {what}", flush=True)
    print("| model | input | median (s) | peak memory | note |\n|---|---|---|---|---|", flush=True)
    for name in rows:
        memory.reset()
        label, shape, t, note = run_row(name, args.runs, d, dtype)
        if DEVICE == "cuda":
            note = (note + "; " if note else "") + f"torch allocator peak {human(torch.cuda.max_memory_allocated())}"
        print(f"| {label} | {shape} | {t:.4f} | {human(memory.peak_bytes())} | {note} |", flush=True)


if __name__ == "__main__":
    main()
