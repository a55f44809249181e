#!/usr/bin/env python3
"""PyTorch reference for examples/bench_train.rs: one LoRA consistency-distillation step with
diffusers' UNet and peft (student fwd + bwd, teacher = adapters disabled with CFG in one batch,
stop-grad target, AdamW), with and without gradient checkpointing. Random weights, fp32.

Each row runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own.
    ~/.cache/cm-venv/bin/python scripts/bench_train_reference.py [--threads 2] [--latent 32] [--batch 1]
        [--rank 64] [--runs 3] [--device cpu|cuda] [--unet DIR]
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LCM14 = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
         "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]


def row(args, checkpointing):
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device
    config = json.loads((Path(args.unet) / "config.json").read_text())
    unet = UNet2DConditionModel.from_config(config).to(device)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=LCM14))
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-4)
    ab = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod.to(device)
    b, s = args.batch, args.latent

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        x0 = torch.randn(b, config["in_channels"], s, s, device=device)
        noise = torch.randn_like(x0)
        width = config["cross_attention_dim"]
        cond = torch.randn(b, 77, width, device=device)
        uncond = torch.randn(b, 77, width, device=device)
        t = torch.randint(1, 50, (b,), device=device) * 20 - 1
        sp = (t - 20).clamp(min=0)
        a_t = ab[t].view(-1, 1, 1, 1)
        a_s = ab[sp].view(-1, 1, 1, 1)
        x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
        eps = unet(x_t, t, encoder_hidden_states=cond).sample
        online = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        with torch.no_grad():
            unet.disable_adapters()
            both = unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample
            unet.enable_adapters()
            u, c = both.chunk(2)
            e = u + 7.5 * (c - u)
            x0_hat = (x_t - (1 - a_t).sqrt() * e) / a_t.sqrt()
            x_s = a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * e
            e_s = unet(x_s, sp, encoder_hidden_states=cond).sample
            target = (x_s - (1 - a_s).sqrt() * e_s) / a_s.sqrt()
        loss = (((online - target) ** 2 + 1e-6).sqrt() - 1e-3).mean()
        loss.backward()
        optim.step()
        optim.zero_grad()
        sync()

    step()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    print(json.dumps({"median": statistics.median(times), "peak": peak}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", default=str(ROOT / "assets/sd15/unet"), help="a folder with the UNet config.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--row", choices=["checkpointing", "plain"])
    args = parser.parse_args()
    if args.row:
        row(args, args.row == "checkpointing")
        return
    import torch
    print(f"torch {torch.__version__}, {args.threads} threads, rank {args.rank}, {args.runs} runs (median)\n")
    print("| row | latents x batch | median (s) | peak memory |\n|---|---|---|---|")
    for name, label in (("checkpointing", "checkpointing"), ("plain", "no checkpointing")):
        out = subprocess.run([sys.executable, __file__, "--row", name] + sys.argv[1:], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        print(f"| LoRA CD step, {label} | {args.latent}x{args.latent} x{args.batch} | {result['median']:.3f} | "
              f"{result['peak'] / 2**30:.1f} GiB |")


if __name__ == "__main__":
    main()
