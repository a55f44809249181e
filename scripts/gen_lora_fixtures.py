#!/usr/bin/env python3
"""Makes the LoRA fixtures with peft / diffusers, and verifies LoRA files written by our code.

Generation (default mode), on the tiny pipeline of tests/fixtures/tiny-sd (run gen_fixtures.py first):
  For two target sets, `attn` (to_q, to_k, to_v, to_out.0; r = 4, alpha = 8) and `lcm14` (the 14
  LCM-LoRA modules; r = 4, alpha = 4, rank_pattern {time_emb_proj: 2}, alpha_pattern {conv1: 2}),
  peft injects an adapter into the UNet (`unet.add_adapter`), lora_B is randomised (peft starts it at
  zero, which would make every test trivially pass), and
    tests/fixtures/lora/<set>_peft.safetensors    `StableDiffusionPipeline.save_lora_weights` with the
                                                  adapter config as `lora_adapter_metadata`
    tests/fixtures/lora/<set>_kohya.safetensors   the same factors in kohya naming with `.alpha` tensors
    tests/fixtures/lora/lcm14_peft_fp16.safetensors   the lcm14 file in fp16
  Each file is loaded back into a fresh pipeline with `pipe.load_lora_weights` and must reproduce
  the in-memory peft UNet output (asserted here), then
    tests/fixtures/golden/lora.safetensors        sample, timestep, encoder_hidden_states, out_base,
                                                  out_attn, out_lcm14, out_lcm14_fp16 (UNet outputs
                                                  with the LoRA applied by diffusers)
  It also prints the trainable parameter counts peft reports for the SD1.5 UNet config
  (assets/sd15/unet/config.json, built on the meta device) at rank 64, which the Rust tests hold.

Verification mode:
    ~/.cache/cm-venv/bin/python scripts/gen_lora_fixtures.py --verify FILE --set attn|lcm14|lcm14_fp16
  loads FILE (written by our exporter) with `pipe.load_lora_weights` into the tiny pipeline and
  compares the UNet output with the golden output of that set; exits 1 above 1e-4 relative error.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(2)

from diffusers import StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from gen_fixtures import VERSIONS, canonicalize_header  # noqa: E402

LCM14 = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
         "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
SETS = {
    "attn": dict(r=4, lora_alpha=8, target_modules=ATTN),
    "lcm14": dict(r=4, lora_alpha=4, target_modules=LCM14, rank_pattern={"time_emb_proj": 2},
                  alpha_pattern={"conv1": 2}),
}


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def load_pipe(fixtures):
    return StableDiffusionPipeline.from_pretrained(str(fixtures / "tiny-sd"), safety_checker=None,
                                                   requires_safety_checker=False)


def peft_to_kohya(state_dict, config):
    """peft keys `unet.<path>.lora_{A,B}.weight` -> kohya `lora_unet_<path_>.lora_{down,up}.weight` + `.alpha`."""
    out = {}
    for key, value in state_dict.items():
        path, factor = key.removeprefix("unet.").rsplit(".lora_", 1)
        name = "lora_unet_" + path.replace(".", "_")
        if factor == "A.weight":
            out[name + ".lora_down.weight"] = value
            alpha = config.lora_alpha
            for pattern, a in config.alpha_pattern.items():
                if path == pattern or path.endswith("." + pattern):
                    alpha = a
            out[name + ".alpha"] = torch.tensor(float(alpha))
        else:
            out[name + ".lora_up.weight"] = value
    return out


def save(path, tensors, metadata):
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    canonicalize_header(path)


def unet_out(pipe, golden):
    return pipe.unet(golden["sample"], golden["timestep"], golden["encoder_hidden_states"]).sample


def sd15_counts():
    config = json.loads((ROOT / "assets" / "sd15" / "unet" / "config.json").read_text())
    counts = {}
    for name, targets in (("lcm14", LCM14), ("attn", ATTN)):
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
            unet.add_adapter(LoraConfig(r=64, lora_alpha=64, target_modules=targets))
        counts[name] = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
        counts[name + "_layers"] = sum(1 for n, _ in unet.named_parameters() if n.endswith("lora_A.default.weight"))
    return counts


@torch.no_grad()
def generate(fixtures):
    lora_dir = fixtures / "lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    golden_in = load_file(str(fixtures / "golden" / "unet.safetensors"))
    golden = {k: golden_in[k] for k in ("sample", "timestep", "encoder_hidden_states")}
    golden["out_base"] = unet_out(load_pipe(fixtures), golden)
    for name, kwargs in SETS.items():
        pipe = load_pipe(fixtures)
        config = LoraConfig(**kwargs)
        torch.manual_seed(len(name))  # lora_A's kaiming init draws from the global generator
        pipe.unet.add_adapter(config)
        gen = torch.Generator().manual_seed(len(name) * 7919)
        for n, p in pipe.unet.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        expected = unet_out(pipe, golden)
        state = get_peft_model_state_dict(pipe.unet)
        metadata = pipe.unet.peft_config["default"].to_dict()
        metadata["target_modules"] = sorted(metadata["target_modules"])  # a set: sorted for byte-identical reruns
        peft_file = lora_dir / f"{name}_peft.safetensors"
        StableDiffusionPipeline.save_lora_weights(str(lora_dir), unet_lora_layers=state, weight_name=peft_file.name,
                                                  unet_lora_adapter_metadata=metadata)
        canonicalize_header(peft_file)
        kohya_file = lora_dir / f"{name}_kohya.safetensors"
        save(kohya_file, peft_to_kohya(state, config), {"format": "pt", "generator": "scripts/gen_lora_fixtures.py"})
        variants = [(peft_file, expected), (kohya_file, expected)]
        if name == "lcm14":
            fp16_file = lora_dir / "lcm14_peft_fp16.safetensors"
            StableDiffusionPipeline.save_lora_weights(
                str(lora_dir), unet_lora_layers={k: v.half() for k, v in state.items()}, weight_name=fp16_file.name,
                unet_lora_adapter_metadata=metadata)
            canonicalize_header(fp16_file)
            fresh = load_pipe(fixtures)
            fresh.load_lora_weights(str(fp16_file))
            golden["out_lcm14_fp16"] = unet_out(fresh, golden)
            print(f"lcm14 fp16 vs fp32 LoRA output: rel {rel(golden['out_lcm14_fp16'], expected):.2e}")
        for path, want in variants:
            fresh = load_pipe(fixtures)
            fresh.load_lora_weights(str(path))
            error = rel(unet_out(fresh, golden), want)
            print(f"{path.name}: diffusers load_lora_weights reproduces the peft UNet, rel {error:.2e}")
            assert error < 1e-6, path
        golden[f"out_{name}"] = expected
        print(f"{name}: output moved from base by rel {rel(expected, golden['out_base']):.3f}")
    save(fixtures / "golden" / "lora.safetensors", golden,
         {**{k: str(v) for k, v in VERSIONS.items()}, "generator": "scripts/gen_lora_fixtures.py",
          "sets": json.dumps(SETS, sort_keys=True)})
    print("SD1.5 UNet, rank 64, peft trainable parameters:", json.dumps(sd15_counts()))


@torch.no_grad()
def verify(fixtures, path, which):
    golden = load_file(str(fixtures / "golden" / "lora.safetensors"))
    pipe = load_pipe(fixtures)
    pipe.load_lora_weights(str(path))
    error = rel(unet_out(pipe, golden), golden[f"out_{which}"])
    print(f"{path}: diffusers {VERSIONS['diffusers']} load_lora_weights -> UNet output vs golden out_{which}: "
          f"rel {error:.3e}")
    sys.exit(0 if error < 1e-4 else 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", default=str(ROOT / "tests" / "fixtures"))
    parser.add_argument("--verify", help="a LoRA file written by our exporter")
    parser.add_argument("--set", choices=["attn", "lcm14", "lcm14_fp16"], default="lcm14")
    args = parser.parse_args()
    fixtures = Path(args.fixtures)
    if args.verify:
        verify(fixtures, Path(args.verify), args.set)
    else:
        generate(fixtures)


if __name__ == "__main__":
    main()
