#!/usr/bin/env python3
"""PIL + torchvision reference for examples/bench_data.rs: the same files, the same transform
(Resize(512) + CenterCrop(512) + ToTensor + Normalize), images/s on 1 process and with a
2-worker torch DataLoader.

Rerun right after the Rust benchmark (which writes the images):
    ~/.cache/cm-venv/bin/python scripts/bench_data_reference.py --dir target/bench-data
"""
import argparse
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

T = transforms.Compose([transforms.Resize(512), transforms.CenterCrop(512), transforms.ToTensor(),
                        transforms.Normalize([0.5] * 3, [0.5] * 3)])


class Files(torch.utils.data.Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return T(Image.open(self.files[i]).convert("RGB"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="target/bench-data")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = sorted(Path(args.dir).glob("*.jpg"))
    start = time.perf_counter()
    for f in files:
        T(Image.open(f).convert("RGB"))
    one = len(files) / (time.perf_counter() - start)
    loader = torch.utils.data.DataLoader(Files(files), batch_size=1, num_workers=args.workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    many = len(files) / (time.perf_counter() - start)
    print(f"images: {len(files)} in {args.dir}")
    print("| loader | workers | images/s |\n|---|---|---|")
    print(f"| PIL + torchvision | 1 | {one:.1f} |")
    print(f"| PIL + torchvision, DataLoader | {args.workers} | {many:.1f} |")


if __name__ == "__main__":
    main()
