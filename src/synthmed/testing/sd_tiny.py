"""A tiny, randomly initialised Stable Diffusion checkpoint in diffusers format, built offline from small configs.

For dry runs and tests when no real SD weights are available: same structure as SD 1.5 (VAE with 8x downsampling,
CLIP text encoder + the real CLIP BPE tokenizer, cross-attention UNet), a few hundred thousand parameters.

    python -m synthmed.testing.sd_tiny runs/tiny-sd
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

START, END = "<|startoftext|>", "<|endoftext|>"


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_bpe_path() -> Path:
    """The CLIP BPE merges file shipped inside the open_clip_torch wheel."""
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        from synthmed.errors import UserError

        raise UserError(f"CLIP BPE vocabulary not found at {path}: reinstall open_clip_torch")
    return path


def write_clip_tokenizer_files(out_dir: str | os.PathLike[str]) -> Path:
    """Write CLIP's ``vocab.json`` + ``merges.txt`` (49408 tokens) as the HF CLIP tokenizer expects."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + [START, END]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return out


def build_tiny_sd(out_dir: str | os.PathLike[str], seed: int = 0, cross_attention_dim: int = 32,
                  unet_channels: tuple[int, int] = (32, 64)) -> Path:
    """Build and save a tiny SD pipeline directory (random weights, deterministic for ``seed``)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(unet_channels), norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=64,
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=cross_attention_dim, intermediate_size=2 * cross_attention_dim,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77, projection_dim=cross_attention_dim,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    with tempfile.TemporaryDirectory() as tmp:
        tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(tmp), model_max_length=77)
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    tmp_out = Path(tempfile.mkdtemp(prefix=".tmp-" + out.name + ".", dir=out.parent if out.parent.exists() else None))
    try:
        pipe.save_pretrained(tmp_out, safe_serialization=True)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp_out), str(out))
    finally:
        shutil.rmtree(tmp_out, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build a tiny random Stable Diffusion checkpoint (diffusers format).")
    ap.add_argument("out_dir", help="folder to write (replaced if it exists)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cross-attention-dim", type=int, default=32)
    args = ap.parse_args(argv)
    path = build_tiny_sd(args.out_dir, seed=args.seed, cross_attention_dim=args.cross_attention_dim)
    print(f"tiny Stable Diffusion written to {path}")


if __name__ == "__main__":
    main()
