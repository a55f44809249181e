#!/usr/bin/env python3
"""Golden values of torchvision's default image transform, for cm-data's transform parity test.

Takes three real photos bundled with scikit-image (astronaut: NASA, public domain; coffee and
chelsea: CC0), crops them to odd, non-square sizes, saves them as JPEG and PNG under
tests/fixtures/images/, and records what the reference path gives for each:
    PIL.Image.open(f).convert("RGB") -> Resize(R) -> CenterCrop(R) -> ToTensor() -> Normalize(0.5, 0.5)
for R in {64, 96}, in tests/fixtures/golden/transforms.safetensors (key `<file>@<R>`, [3, R, R]).
Also writes a palette PNG and a CMYK JPEG (decoding checks: they must become RGB).

Rerun (from the repository root, with scripts/requirements.txt installed):
    python3 scripts/gen_transform_fixtures.py
"""
import json
from pathlib import Path

import skimage
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(skimage.__file__).parent / "data"
OUT = ROOT / "tests" / "fixtures"


def main():
    images = OUT / "images"
    images.mkdir(parents=True, exist_ok=True)
    sources = [("astronaut.png", (13, 7, 13 + 301, 7 + 457)),  # crop box (left, top, right, bottom)
               ("coffee.png", (0, 10, 599, 10 + 333)),
               ("chelsea.png", (5, 0, 5 + 419, 300))]
    files = []
    for name, box in sources:
        img = Image.open(DATA / name).convert("RGB").crop(box)
        stem = Path(name).stem
        img.save(images / f"{stem}.jpg", quality=90)
        files.append(f"{stem}.jpg")
    # One PNG too (lossless path), half size.
    Image.open(images / "coffee.jpg").resize((299, 166)).save(images / "coffee_small.png")
    files.append("coffee_small.png")

    # Modes that must become RGB: a palette PNG and a CMYK JPEG (solid red: C=0, M=Y=255, K=0).
    palette = Image.new("P", (8, 6))
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    palette.putdata([(x // 3) for y in range(6) for x in range(8)])
    palette.save(images / "palette.png")
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(images / "cmyk_red.jpg", quality=95)

    tensors = {}
    for r in (64, 96):
        t = transforms.Compose([transforms.Resize(r), transforms.CenterCrop(r), transforms.ToTensor(),
                                transforms.Normalize([0.5] * 3, [0.5] * 3)])
        for f in files:
            tensors[f"{f}@{r}"] = t(Image.open(images / f).convert("RGB")).contiguous()
    save_file(tensors, str(OUT / "golden" / "transforms.safetensors"),
              metadata={"generator": "scripts/gen_transform_fixtures.py", "files": json.dumps(files)})
    print("wrote", sorted(tensors), [((images / f).stat().st_size) for f in files])


if __name__ == "__main__":
    main()
