#!/usr/bin/env python3
"""Checks that the demo teacher (assets/demo-teacher, written by examples/train_teacher.rs) loads in
diffusers' StableDiffusionPipeline and draws the same image as our sampler from the same noise.

Write the initial noise (--write-init), draw our image from it with the sample example, then compare:
    cargo run --release --example sample -- --model assets/demo-teacher --prompt "a large red circle in the center" \\
        --scheduler ddim --steps 50 --guidance 3 --out /tmp/ours.png --save-tensors /tmp/ours.safetensors \\
        --init-latents /tmp/init.safetensors
    ~/.cache/cm-venv/bin/python scripts/check_demo_teacher.py --guidance 3
`--write-init` writes a fresh /tmp/init.safetensors (standard normal, the teacher's latent shape) first.
Prints the relative error of the final latents and of the decoded images; exits 1 above 1e-3.
"""
import argparse
import sys
from pathlib import Path

import torch

torch.set_num_threads(2)

from diffusers import DDIMScheduler, StableDiffusionPipeline  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "assets" / "demo-teacher"))
    parser.add_argument("--prompt", default="a large red circle in the center")
    parser.add_argument("--init", default="/tmp/init.safetensors")
    parser.add_argument("--ours", default="/tmp/ours.safetensors")
    parser.add_argument("--write-init", action="store_true")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args()
    pipe = StableDiffusionPipeline.from_pretrained(args.model, variant="fp16", torch_dtype=torch.float32,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    size = pipe.unet.config.sample_size
    if args.write_init:
        g = torch.Generator().manual_seed(3)
        save_file({"latents": torch.randn(1, 4, size, size, generator=g)}, args.init)
        print("wrote", args.init)
        return
    init = load_file(args.init)["latents"]
    out = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, latents=init,
               output_type="pt", return_dict=True)
    images = out.images
    # Final latents: rerun the loop to the latents (output_type="latent").
    latents = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, latents=init,
                   output_type="latent").images
    ours = load_file(args.ours)
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()
    e_lat = rel(ours["latents"], latents)
    e_img = rel(ours["images"], images)
    print(f"final latents rel. error {e_lat:.2e}, images rel. error {e_img:.2e}")
    sys.exit(0 if max(e_lat, e_img) < 1e-3 else 1)


if __name__ == "__main__":
    main()
