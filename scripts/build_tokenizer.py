#!/usr/bin/env python3
"""Builds assets/tokenizer/ (the Stable Diffusion 1.5 CLIP tokenizer) from open_clip's BPE file.

The SD1.5 tokenizer is openai/clip-vit-large-patch14's: a byte-level BPE with 49408 tokens whose
merges ship, under the MIT licence, in the PyPI package open_clip_torch as
`open_clip/bpe_simple_vocab_16e6.txt.gz`. The model hub is not needed.

Steps:
1. read the merges (lines 1 .. 48894 of the gz file, as open_clip's SimpleTokenizer does);
2. build the vocabulary in CLIP's order: 256 byte symbols, the same with `</w>`, one token per
   merge, then `<|startoftext|>` (49406) and `<|endoftext|>` (49407);
3. write them as vocab.json + merges.txt, load them with transformers' CLIPTokenizer (the reference implementation) and save it,
   which writes tokenizer.json (what the Rust side loads) and tokenizer_config.json;
4. copy open_clip's licence next to it.

Rerun (from the repository root, with scripts/requirements.txt installed):
    python3 scripts/build_tokenizer.py            # writes assets/tokenizer/
"""
import argparse
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import open_clip
from transformers import CLIPTokenizer

N_MERGES = 49152 - 256 - 2  # open_clip SimpleTokenizer: merges[1 : 49152 - 256 - 2 + 1]


def bytes_to_unicode():
    """The byte -> printable-unicode table of GPT-2 / CLIP byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_vocab_and_merges(bpe_gz: Path):
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    return {token: i for i, token in enumerate(vocab)}, merges


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="assets/tokenizer", help="output folder")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    package = Path(open_clip.__file__).parent
    vocab, merges = build_vocab_and_merges(package / "bpe_simple_vocab_16e6.txt.gz")
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "vocab.json")
        merges_file = os.path.join(tmp, "merges.txt")
        json.dump(vocab, open(vocab_file, "w", encoding="utf-8"), ensure_ascii=False)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            f.writelines(" ".join(m) + "\n" for m in merges)
        # The SD1.5 repository's tokenizer/ folder holds exactly vocab.json + merges.txt: load it the
        # way diffusers does.
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
        tokenizer.save_pretrained(str(out))
    # Keep only what the Rust side reads, plus provenance.
    for name in os.listdir(out):
        if name not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "LICENSE-open_clip"):
            os.remove(out / name)
    licence_dir = next(Path(open_clip.__file__).parent.parent.glob("open_clip_torch-*.dist-info")) / "licenses"
    licence = next(licence_dir.iterdir())
    shutil.copy(licence, out / "LICENSE-open_clip")
    ids = tokenizer("a photograph of an astronaut riding a horse", padding="max_length", max_length=77, truncation=True).input_ids
    print("check:", ids[:12])
    print("wrote", sorted(os.listdir(out)))


if __name__ == "__main__":
    main()
