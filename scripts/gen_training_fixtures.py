#!/usr/bin/env python3
"""Golden values of training for the cm-train parity tests, from diffusers' UNet with a peft LoRA.

Writes tests/fixtures/golden/training.safetensors from the tiny pipeline (tests/fixtures/tiny-sd) with
the peft-made 14-target LoRA (tests/fixtures/lora/lcm14_peft.safetensors, non-zero lora_B) loaded into
trainable peft adapters:

1. `grad.*`: LoRA gradients of a simple loss, mean(unet(sample, t, context)^2), at a fixed input.
2. `<case>.*`: ONE consistency step, written here in plain torch from the equations of
   ../shared/docs/mission.md (independently of our Rust code), for four cases:
     cd_ddim_l2        CD with CFG, DDIM-to-boundary, K = 1, L2, seed solver (s = 0 is clean)
     cd_lcm_huber      CD with CFG, LCM c_skip / c_out, K = 1, pseudo-Huber c = 0.001, diffusers solver
     mb4_ddim_huber    multi-boundary CD, K = 4 (boundaries 0, 259, 499, 759), pseudo-Huber
     ct_ddim_huber     CT (x_s from the same noise, no teacher), pseudo-Huber
   The teacher is the same UNet with its adapters disabled (peft `disable_adapters`), the target the
   same network under no_grad (stop-grad). Per case: the draws (`index`, `w`), `x_t`, `x_s`,
   `online`, `target`, `loss` and the LoRA gradients `grad.<peft key>`.
Shared inputs: `x0`, `noise`, `cond`, `uncond` (stand-ins for latents and text embeddings).

Rerun (from the repository root, with scripts/requirements.txt installed):
    ~/.cache/cm-venv/bin/python scripts/gen_training_fixtures.py
Byte-identical on the same CPU and library versions (torch kernels may round differently elsewhere).
"""
import sys
from pathlib import Path

import torch

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

from diffusers import DDIMScheduler, UNet2DConditionModel  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import set_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from gen_fixtures import save  # noqa: E402
from gen_lora_fixtures import SETS  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
SKIP = 20  # 50-step solver grid over 1000 timesteps: t = 20 i - 1, s = t - 20


def load_unet():
    unet = UNet2DConditionModel.from_pretrained(str(FIXTURES / "tiny-sd" / "unet")).float()
    unet.add_adapter(LoraConfig(**SETS["lcm14"]))
    state = load_file(str(FIXTURES / "lora" / "lcm14_peft.safetensors"))
    state = {k.removeprefix("unet."): v for k, v in state.items()}
    result = set_peft_model_state_dict(unet, state)
    assert not result.unexpected_keys, result.unexpected_keys
    for name, p in unet.named_parameters():
        p.requires_grad_("lora_" in name)
    return unet


def lora_grads(unet, prefix):
    """Gradients keyed like the diffusers LoRA file: `unet.<path>.lora_{A,B}.weight`."""
    out = {}
    for name, p in unet.named_parameters():
        if "lora_" in name:
            assert p.grad is not None, name
            key = "unet." + name.replace(".default", "")
            out[f"{prefix}.grad.{key}"] = p.grad.detach().clone()
    return out


def alpha_bars():
    config = DDIMScheduler.from_pretrained(str(FIXTURES / "tiny-sd" / "scheduler")).config
    return DDIMScheduler.from_config(config).alphas_cumprod.float()


def per_example(values):
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1, 1)


def step(unet, ab, case, x0, noise, cond, uncond):
    """One consistency step, numbered as in the mission doc."""
    # 1. Pairs (t, s), boundaries b(s), x_t.
    t = [SKIP * (i + 1) - 1 for i in case["index"]]
    s = [max(ti - SKIP, 0) for ti in t]
    bounds = case["boundaries"]
    b = [max(x for x in bounds if x <= si) for si in s]

    def alpha_bar_solver(ts):  # the seed solver treats timestep 0 as clean data
        return [1.0 if (ti == 0 and case["solver"] == "seed") else float(ab[ti]) for ti in ts]

    a_t = alpha_bar_solver(t)
    x_t = per_example([a ** 0.5 for a in a_t]) * x0 + per_example([(1 - a) ** 0.5 for a in a_t]) * noise
    t_tensor = torch.tensor(t)
    s_tensor = torch.tensor(s)

    def f(eps, x, ts):
        """The consistency function from an epsilon prediction at timesteps ts towards b."""
        abt = per_example([float(ab[ti]) for ti in ts])
        x0_hat = (x - (1 - abt).sqrt() * eps) / abt.sqrt()
        if case["param"] == "lcm":
            scaled = torch.tensor([10.0 * ti for ti in ts]).reshape(-1, 1, 1, 1)
            c_skip = 0.25 / (scaled ** 2 + 0.25)
            c_out = scaled / (scaled ** 2 + 0.25).sqrt()
            return c_skip * x + c_out * x0_hat
        out = []
        for i, (ti, bi) in enumerate(zip(ts, b)):
            if ti == bi:  # the boundary condition, exactly
                out.append(x[i:i + 1])
            elif bi == 0:
                out.append(x0_hat[i:i + 1])
            else:
                abb = float(ab[bi])
                out.append(abb ** 0.5 * x0_hat[i:i + 1] + (1 - abb) ** 0.5 * eps[i:i + 1])
        return torch.cat(out)

    # 2. Online prediction with gradients.
    unet.enable_adapters()
    online = f(unet(x_t, t_tensor, encoder_hidden_states=cond).sample, x_t, t)
    # 3. Neighbour x_s.
    with torch.no_grad():
        if case["neighbour"] == "analytic":
            a_s = alpha_bar_solver(s)
            x_s = per_example([a ** 0.5 for a in a_s]) * x0 + per_example([(1 - a) ** 0.5 for a in a_s]) * noise
        else:
            unet.disable_adapters()
            both = unet(torch.cat([x_t, x_t]), torch.cat([t_tensor, t_tensor]),
                        encoder_hidden_states=torch.cat([uncond, cond])).sample
            unet.enable_adapters()
            eps_u, eps_c = both.chunk(2)
            eps = eps_u + per_example(case["w"]) * (eps_c - eps_u)
            abt = per_example([float(ab[ti]) for ti in t])
            x0_hat = (x_t - (1 - abt).sqrt() * eps) / abt.sqrt()
            abs_ = per_example(alpha_bar_solver(s))
            x_s = abs_.sqrt() * x0_hat + (1 - abs_).sqrt() * eps
        # 4. Target, stop-grad, same network.
        target = f(unet(x_s, s_tensor, encoder_hidden_states=cond).sample, x_s, s)
    # 5. Loss.
    diff = online - target
    if case["loss"] == "l2":
        loss = (diff ** 2).mean()
    else:
        c = 0.001
        loss = ((diff ** 2 + c * c).sqrt() - c).mean()
    unet.zero_grad()
    loss.backward()
    name = case["name"]
    out = {f"{name}.index": torch.tensor(case["index"]), f"{name}.w": torch.tensor(case["w"]),
           f"{name}.x_t": x_t, f"{name}.x_s": x_s, f"{name}.online": online.detach(),
           f"{name}.target": target, f"{name}.loss": loss.detach().reshape(1)}
    out.update(lora_grads(unet, name))
    return out


CASES = [
    dict(name="cd_ddim_l2", neighbour="teacher", param="ddim", boundaries=[0], solver="seed", loss="l2",
         index=[10, 0], w=[7.5, 3.0]),
    dict(name="cd_lcm_huber", neighbour="teacher", param="lcm", boundaries=[0], solver="diffusers",
         loss="huber", index=[10, 0], w=[7.5, 1.0]),
    dict(name="mb4_ddim_huber", neighbour="teacher", param="ddim", boundaries=[0, 259, 499, 759], solver="seed",
         loss="huber", index=[30, 13], w=[7.5, 7.5]),
    dict(name="ct_ddim_huber", neighbour="analytic", param="ddim", boundaries=[0], solver="seed", loss="huber",
         index=[10, 0], w=[1.0, 1.0]),
]


def main():
    unet = load_unet()
    gen = torch.Generator().manual_seed(20261128)
    x0 = torch.randn(2, 4, 16, 16, generator=gen)
    noise = torch.randn(2, 4, 16, 16, generator=gen)
    cond = torch.randn(2, 77, 32, generator=gen)
    uncond = torch.randn(2, 77, 32, generator=gen)
    tensors = dict(x0=x0, noise=noise, cond=cond, uncond=uncond)

    # 1. Gradients of a simple loss.
    sample = torch.randn(2, 4, 16, 16, generator=gen)
    timestep = torch.tensor([500, 20])
    unet.zero_grad()
    loss = (unet(sample, timestep, encoder_hidden_states=cond).sample ** 2).mean()
    loss.backward()
    tensors.update({"simple.sample": sample, "simple.timestep": timestep.float(), "simple.loss": loss.detach().reshape(1)})
    tensors.update(lora_grads(unet, "simple"))

    # 2. The consistency step.
    ab = alpha_bars()
    for case in CASES:
        tensors.update(step(unet, ab, case, x0, noise, cond, uncond))
        print(case["name"], "loss", float(tensors[case["name"] + ".loss"]))
    path = FIXTURES / "golden" / "training.safetensors"
    save(path, tensors)
    print("wrote", path, len(tensors), "tensors")


if __name__ == "__main__":
    main()
