#!/usr/bin/env python3
"""Golden values of diffusers' schedulers for the cm-schedulers parity tests.

Writes tests/fixtures/golden/schedulers.json (timestep lists),
tests/fixtures/golden/scheduler_class_defaults.json (the config each scheduler class resolves from a
file that omits keys: `Class.from_config(file).config`) and
tests/fixtures/golden/schedulers.safetensors (tensors), from diffusers' DDIMScheduler and
LCMScheduler built on the SD1.5 configs in ../shared/reference/sd15 (copied to assets/sd15), plus
LatentConsistencyModelPipeline.get_guidance_scale_embedding. No model weights are involved.

Rerun (from the repository root, with scripts/requirements.txt installed):
    python3 scripts/gen_scheduler_fixtures.py [--out tests/fixtures/golden]
"""
import argparse
import json
from pathlib import Path

import torch
from diffusers import (DDIMScheduler, DDPMScheduler, LCMScheduler, LatentConsistencyModelPipeline,
                       PNDMScheduler)
from safetensors.torch import save_file

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "sd15"


def load_config(name):
    return json.loads((ASSETS / name / "scheduler_config.json").read_text())


def ddim_timesteps(base):
    out = {}
    for spacing in ("leading", "trailing", "linspace"):
        for n in (1, 2, 4, 8, 50):
            s = DDIMScheduler.from_config({**base, "timestep_spacing": spacing})
            s.set_timesteps(n)
            out[f"ddim_{spacing}_{n}"] = s.timesteps.tolist()
    return out


def lcm_timesteps(base):
    out = {}
    for n in (1, 2, 4, 8):
        s = LCMScheduler.from_config(base)
        s.set_timesteps(n)
        out[f"lcm_{n}"] = s.timesteps.tolist()
    return out


KEYS = ["num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "set_alpha_to_one", "steps_offset",
        "prediction_type", "timestep_spacing", "clip_sample", "clip_sample_range", "original_inference_steps",
        "timestep_scaling"]


def class_defaults():
    """What each class reads from configs that omit keys (the SD1.5 PNDM file without clip_sample, and {})."""
    pndm = load_config("scheduler")
    pndm.pop("clip_sample")
    out = {}
    for source_name, source in (("pndm_without_clip_sample", pndm), ("empty", {})):
        out[source_name] = {"config": source}
        for cls in (DDIMScheduler, LCMScheduler, PNDMScheduler, DDPMScheduler):
            resolved = cls.from_config(source).config
            out[source_name][cls.__name__] = {k: resolved[k] for k in KEYS if k in resolved}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="tests/fixtures/golden")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    ddim_config = load_config("scheduler_ddim")
    lcm_config = load_config("scheduler_lcm")
    timesteps = {**ddim_timesteps(ddim_config), **lcm_timesteps(lcm_config)}
    tensors = {}

    # Schedules: alphas_cumprod of each beta schedule.
    for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        s = DDIMScheduler.from_config({**ddim_config, "beta_schedule": schedule})
        tensors[f"alphas_cumprod_{schedule}"] = s.alphas_cumprod.float().contiguous()

    # add_noise with per-sample timesteps.
    s = DDIMScheduler.from_config(ddim_config)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    tensors.update(add_noise_x0=x0, add_noise_noise=noise, add_noise_t=t,
                   add_noise_out=s.add_noise(x0, noise, t))

    # One DDIM step per prediction type (trailing 4 steps, from t = 749 -> 499).
    sample, model_output = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    tensors.update(step_sample=sample, step_model_output=model_output)
    for prediction in ("epsilon", "v_prediction", "sample"):
        s = DDIMScheduler.from_config({**ddim_config, "timestep_spacing": "trailing", "prediction_type": prediction})
        s.set_timesteps(4)
        result = s.step(model_output, 749, sample, eta=0.0)
        tensors[f"ddim_step_{prediction}_prev"] = result.prev_sample
        tensors[f"ddim_step_{prediction}_x0"] = result.pred_original_sample
    # Last DDIM step (prev timestep < 0: final alpha) with leading spacing, t = 1.
    s = DDIMScheduler.from_config(ddim_config)
    s.set_timesteps(50)
    tensors["ddim_step_last_prev"] = s.step(model_output, int(s.timesteps[-1]), sample, eta=0.0).prev_sample

    # LCM: boundary scalings and one step with fixed noise (4 steps, step index 1, t = 759).
    s = LCMScheduler.from_config(lcm_config)
    ts = torch.tensor([0, 1, 19, 259, 499, 759, 999])
    c_skip, c_out = zip(*[s.get_scalings_for_boundary_condition_discrete(int(v)) for v in ts])
    tensors.update(lcm_scalings_t=ts, lcm_c_skip=torch.tensor([float(c) for c in c_skip]),
                   lcm_c_out=torch.tensor([float(c) for c in c_out]))
    s.set_timesteps(4)
    lcm_noise = torch.randn(2, 4, 8, 8)
    import diffusers.schedulers.scheduling_lcm as lcm_module
    original = lcm_module.randn_tensor
    lcm_module.randn_tensor = lambda *a, **k: lcm_noise.clone()
    s._step_index = None
    s.step(model_output, int(s.timesteps[0]), sample)  # advance to index 1
    result = s.step(model_output, int(s.timesteps[1]), sample)
    lcm_module.randn_tensor = original
    tensors.update(lcm_step_noise=lcm_noise, lcm_step1_prev=result.prev_sample, lcm_step1_denoised=result.denoised)

    # Guidance-scale embedding (the LCM pipeline embeds w - 1).
    w = torch.tensor([0.0, 1.5, 6.5, 14.0])
    tensors["guidance_w"] = w
    tensors["guidance_embedding_256"] = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
        None, w, embedding_dim=256).float()

    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(out / "schedulers.safetensors"),
              metadata={"generator": "scripts/gen_scheduler_fixtures.py"})
    (out / "schedulers.json").write_text(json.dumps(timesteps, indent=1))
    (out / "scheduler_class_defaults.json").write_text(json.dumps(class_defaults(), indent=1, sort_keys=True) + "\n")
    print("ddim trailing 4:", timesteps["ddim_trailing_4"], "lcm 4:", timesteps["lcm_4"])
    print("wrote", out / "schedulers.safetensors", out / "schedulers.json")


if __name__ == "__main__":
    main()
