#!/usr/bin/env python3
"""Makes tests/fixtures/: a tiny SD1.5-shaped diffusers pipeline and golden tensors.

Everything is built in code from fixed seeds (no model hub): a CLIPTextModel with the full 49408
vocabulary and hidden size 32, a UNet with two down blocks, cross-attention and 8 heads, a tiny
AutoencoderKL, the SD1.5 tokenizer (vocab.json + merges.txt, as the SD1.5 repository ships it),
DDIM / LCM scheduler configs. Every parameter is then perturbed from its default init (norm
weights 1 + 0.1 n, biases 0.05 n, ...) so that no weight is exactly 0 or 1 and golden tests see
every parameter. Golden inputs/outputs of transformers / diffusers are saved as safetensors.
To stay small (< 25 MB), the text encoder (49408 x 32 embedding) has no fp16 copy and no
key-prefix variant here: the tests derive those from model.safetensors themselves.

Outputs (under --out, default tests/fixtures):
  tokenizer_golden.json                 CLIPTokenizer ids (padded/truncated to 77) of 30+ strings
  tiny-sd/                              the pipeline folder (fp32 weights; .fp16. copies of UNet and VAE)
  tiny-unet-cond-proj/                  the UNet with time_cond_proj_dim = 256 (LCM-style student)
  schedulers/{ddim,lcm}/                scheduler configs
  golden/text_encoder.safetensors       input_ids, last_hidden_state, pooler_output
  golden/unet.safetensors               sample, timestep, encoder_hidden_states, out
  golden/unet_cond_proj.safetensors     + w, timestep_cond
  golden/vae.safetensors                image, posterior_mean, posterior_logvar, latents, decoded
  golden/pipeline_ddim.safetensors      DDIM 4 steps, CFG 7.5, given init_latents
  golden/pipeline_lcm.safetensors       LCM 4 steps, the fresh noise it drew recorded as step_noise

Rerun (from the repository root; needs assets/tokenizer from scripts/build_tokenizer.py):
    python3 -m venv ~/.cache/cm-venv && ~/.cache/cm-venv/bin/pip install -r scripts/requirements.txt
    ~/.cache/cm-venv/bin/python scripts/gen_fixtures.py [--out tests/fixtures]
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

torch.set_num_threads(2)

from diffusers import AutoencoderKL, DDIMScheduler, LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from build_tokenizer import build_vocab_and_merges  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402

SD15 = ROOT / "assets" / "sd15"
PROMPT = "a photograph of an astronaut riding a horse"
VERSIONS = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}

TOKENIZER_STRINGS = [
    PROMPT,
    "",
    "a cat",
    "A Photograph Of An ASTRONAUT",
    "Hello, world!!!",
    "a cat... and a dog?!",
    "1234 apples",
    "3.14159",
    "year 2024, 50% off",
    "it's a dog",
    "don't stop",
    "we'll see; I'm here",
    "they've gone, you're late, he'd know",
    "一只猫坐在桌子上",
    "猫が好きです",
    "고양이가 좋아요",
    "a 🐶 and a 🐱",
    "🚀🚀🚀",
    "café naïve résumé",
    "  many   spaces\tand\nnewlines  ",
    "“quoted” ‘text’",
    "a &amp; b <b>bold</b>",
    "<|startoftext|> inside <|endoftext|>",
    "snake_case and kebab-case and CamelCase",
    "email me at someone@example.com",
    "price: $5.99 (approx.)",
    "a red circle at the top left, a small blue square",
    "masterpiece, best quality, ultra-detailed, 8k",
    "tabs\t\tand trailing ",
    "Ünïcödé ÀÉÎÕÜ ßø",
    ", ".join(["a very long prompt with many words"] * 12),
    "red green blue " * 40,
]


def perturb(module, seed):
    """Moves every parameter off its default init, deterministically."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            n = torch.randn(p.shape, generator=gen)
            if name.endswith("bias"):
                p.copy_(0.05 * n)
            elif "norm" in name and p.dim() == 1:
                p.copy_(1.0 + 0.1 * n)
            elif "embedding" in name and p.dim() == 2:
                p.copy_(0.5 * n)
            else:
                fan_in = max(1, p[0].numel()) if p.dim() > 1 else 1
                p.copy_(n / fan_in**0.5)


def save_fp16_copy(path_in, path_out):
    tensors = load_file(str(path_in))
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}, str(path_out))


def tokenizer_golden(out):
    tok = CLIPTokenizer.from_pretrained(str(ROOT / "assets" / "tokenizer"))
    cases = [{"text": s, "input_ids": tok(s, padding="max_length", max_length=77, truncation=True).input_ids}
             for s in TOKENIZER_STRINGS]
    assert cases[0]["input_ids"][:10] == [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
    (out / "tokenizer_golden.json").write_text(json.dumps(cases, ensure_ascii=False, indent=0))
    return tok


def write_tokenizer_folder(folder):
    """The SD1.5 repository layout: vocab.json + merges.txt + tokenizer_config + special tokens."""
    import open_clip
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        f.unlink()
    vocab, merges = build_vocab_and_merges(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(" ".join(m) + "\n" for m in merges)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(SD15 / "tokenizer" / name, folder / name)


def build_models():
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=32,
        bos_token_id=0, eos_token_id=2, pad_token_id=1)).eval()
    perturb(text_encoder, 1)
    unet_kwargs = dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16, act_fn="silu", flip_sin_to_cos=True,
        freq_shift=0)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_kwargs).eval()
    perturb(unet, 2)
    torch.manual_seed(0)
    unet_cond = UNet2DConditionModel(**unet_kwargs, time_cond_proj_dim=256).eval()
    perturb(unet_cond, 3)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=4, norm_num_groups=16, sample_size=32, scaling_factor=0.18215).eval()
    perturb(vae, 4)
    return text_encoder, unet, unet_cond, vae


def guidance_embedding(w, dim):
    from diffusers import LatentConsistencyModelPipeline
    return LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)


def record_lcm_noise():
    """Wraps the LCM scheduler's randn_tensor so that every fresh noise tensor is recorded."""
    import diffusers.schedulers.scheduling_lcm as lcm_module
    drawn = []
    original = lcm_module.randn_tensor

    def wrapper(*args, **kwargs):
        t = original(*args, **kwargs)
        drawn.append(t.clone())
        return t

    lcm_module.randn_tensor = wrapper
    return drawn, lambda: setattr(lcm_module, "randn_tensor", original)


def canonicalize_header(path):
    """Rewrites a safetensors header with sorted keys: the writer orders metadata keys at random,
    which would make reruns differ byte for byte."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % 8)
    Path(path).write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n:])


def save(path, tensors, **metadata):
    meta = {k: str(v) for k, v in {**metadata, **VERSIONS, "generator": "scripts/gen_fixtures.py"}.items()}
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    canonicalize_header(path)


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "tests" / "fixtures"))
    args = parser.parse_args()
    out = Path(args.out)
    golden = out / "golden"
    golden.mkdir(parents=True, exist_ok=True)

    # 1. Tokenizer ids.
    tokenizer_golden(out)

    # 2. The tiny pipeline folder.
    text_encoder, unet, unet_cond, vae = build_models()
    sd_dir = out / "tiny-sd"
    if sd_dir.exists():
        shutil.rmtree(sd_dir)
    tok_dir = out / "_tokenizer_tmp"
    write_tokenizer_folder(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    scheduler = DDIMScheduler.from_config(json.loads((SD15 / "scheduler_ddim" / "scheduler_config.json").read_text()))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(sd_dir), safe_serialization=True)
    write_tokenizer_folder(sd_dir / "tokenizer")  # keep the SD1.5 layout whatever save_pretrained wrote
    shutil.rmtree(tok_dir)
    for part in ("unet", "vae"):
        save_fp16_copy(sd_dir / part / "diffusion_pytorch_model.safetensors",
                       sd_dir / part / "diffusion_pytorch_model.fp16.safetensors")
    StableDiffusionPipeline.from_pretrained(str(sd_dir))  # the folder loads back in diffusers

    cond_dir = out / "tiny-unet-cond-proj"
    if cond_dir.exists():
        shutil.rmtree(cond_dir)
    unet_cond.save_pretrained(str(cond_dir), safe_serialization=True)
    for name in ("ddim", "lcm"):
        d = out / "schedulers" / name
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(SD15 / f"scheduler_{name}" / "scheduler_config.json", d / "scheduler_config.json")

    # 3. Text encoder golden + the key variant without `text_model.`.
    prompts = [PROMPT, "", "a red circle at the top left", "Hello, world!!! " * 30]
    ids = torch.tensor([tokenizer(p, padding="max_length", max_length=77, truncation=True).input_ids for p in prompts])
    te_out = text_encoder(ids)
    save(golden / "text_encoder.safetensors", {"input_ids": ids.long(), "last_hidden_state": te_out.last_hidden_state,
                                               "pooler_output": te_out.pooler_output}, prompts=json.dumps(prompts))
    te_keys = list(load_file(str(sd_dir / "text_encoder" / "model.safetensors")).keys())
    prefixed = all(k.startswith("text_model.") for k in te_keys)

    # 4. UNet goldens (batch 2, two timesteps), with and without the guidance condition.
    gen = torch.Generator().manual_seed(10)
    sample = torch.randn(2, 4, 16, 16, generator=gen)
    timestep = torch.tensor([999.0, 250.0])
    context = torch.randn(2, 77, 32, generator=gen)
    save(golden / "unet.safetensors", {"sample": sample, "timestep": timestep, "encoder_hidden_states": context,
                                       "out": unet(sample, timestep, context).sample})
    w = torch.tensor([7.5, 3.0])
    timestep_cond = guidance_embedding(w - 1.0, 256)
    save(golden / "unet_cond_proj.safetensors", {
        "sample": sample, "timestep": timestep, "encoder_hidden_states": context, "w": w,
        "timestep_cond": timestep_cond, "out": unet_cond(sample, timestep, context, timestep_cond=timestep_cond).sample})

    # 5. VAE goldens.
    image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    posterior = vae.encode(image).latent_dist
    latents = torch.randn(2, 4, 16, 16, generator=gen)
    save(golden / "vae.safetensors", {"image": image, "posterior_mean": posterior.mean,
                                      "posterior_logvar": posterior.logvar, "latents": latents,
                                      "decoded": vae.decode(latents).sample})

    # 6. Pipeline runs from given initial noise.
    init = torch.randn(1, 4, 16, 16, generator=gen)
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, "")
    common = dict(height=32, width=32, num_inference_steps=4, latents=init.clone())
    pipe.scheduler = DDIMScheduler.from_config(scheduler.config)
    final = pipe(PROMPT, guidance_scale=7.5, output_type="latent", **common).images
    img = pipe(PROMPT, guidance_scale=7.5, output_type="pt", **common).images
    save(golden / "pipeline_ddim.safetensors", {
        "init_latents": init, "prompt_embeds": cond, "negative_prompt_embeds": uncond,
        "timesteps": pipe.scheduler.timesteps.long(), "final_latents": final, "image": img},
        prompt=PROMPT, negative_prompt="", steps=4, guidance=7.5, scheduler="DDIMScheduler")

    pipe.scheduler = LCMScheduler.from_config(json.loads((SD15 / "scheduler_lcm" / "scheduler_config.json").read_text()))
    drawn, restore = record_lcm_noise()
    final = pipe(PROMPT, guidance_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(5),
                 **common).images
    step_noise = torch.stack(drawn)
    drawn.clear()
    img = pipe(PROMPT, guidance_scale=1.0, output_type="pt", generator=torch.Generator().manual_seed(5),
               **common).images
    restore()
    save(golden / "pipeline_lcm.safetensors", {
        "init_latents": init, "step_noise": step_noise, "timesteps": pipe.scheduler.timesteps.long(),
        "final_latents": final, "image": img}, prompt=PROMPT, steps=4, guidance=1.0, scheduler="LCMScheduler")

    # 7. Summary.
    total = 0
    for f in sorted(out.rglob("*")):
        if f.is_file():
            total += f.stat().st_size
            print(f"{f.stat().st_size:>10}  {f.relative_to(out)}")
    print(f"text encoder keys prefixed with text_model.: {prefixed}")
    print(f"total {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
