"""Build the catalog's debug text-to-image pipeline (`debug/tiny-sd`) offline.

A Stable-Diffusion-shaped pipeline from configs with random weights from the entry's seed: a UNet
(block_out_channels `unet_channels`, cross-attention only in the lowest-resolution block), an
AutoencoderKL (`vae_channels`: 2^(n-1) x down), a CLIP text encoder and a CLIP BPE tokenizer over a
hand-written byte-level vocabulary with a few merged words. Saved with `save_pretrained`, so
`StableDiffusionPipeline.from_pretrained(dir)` loads it exactly as a real checkpoint.

Called by `runners.debug_models.build_debug_model` for entries with `task: text-to-image`.
Imports torch, transformers and diffusers: never import it from the control plane.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from runners.debug_models.common import building

__all__ = ["build_debug_pipeline"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77  # CLIP's context, as every Stable Diffusion tokenizer has it

# Words given merges (with the style words of the entry), so prompts tokenize mostly into words rather
# than letters; everything else falls back to bytes, as CLIP's own BPE does.
_WORDS = """
a an the of and in on with at by for from to is are under over near
cat dog bird fish horse cow tree flower forest mountain river lake sea ocean sky cloud sun moon
star city street house road car bridge tower castle garden field snow rain night day morning
sunset light shadow color red green blue yellow white black orange purple gold silver
man woman child girl boy person face portrait hair eyes smile robot dragon ship train
painting photo photograph art style detailed realistic cartoon sketch digital concept
"""


def _bytes_to_unicode() -> list[str]:
    """CLIP's (GPT-2's) byte -> printable character table: the 256 base symbols of the BPE."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def _vocab_and_merges(vocab_size: int, words: list[str]) -> tuple[dict[str, int], list[str]]:
    """A CLIP vocabulary of exactly `vocab_size`: 256 bytes, 256 word-final bytes (`</w>`), merges
    building `words` left to right while room remains, placeholders after, the two specials last
    (where CLIP has them)."""
    base = _bytes_to_unicode()
    if vocab_size < 2 * len(base) + 2:
        raise ValueError(
            f"debug.vocab_size {vocab_size}: a CLIP vocabulary needs at least {2 * len(base) + 2}"
        )
    vocab: dict[str, int] = {}
    for symbol in [*base, *(c + "</w>" for c in base)]:
        vocab[symbol] = len(vocab)
    room = vocab_size - 2
    merges: list[str] = []
    seen: set[str] = set()
    # Longest words first: a word's merges then rank before those of the shorter words inside it,
    # so "cat" is not split as c + at</w> by the merges of "at".
    for word in sorted(words, key=len, reverse=True):
        if not word.isascii() or not word.isalpha() or len(word) < 2:
            continue
        symbols = [*word[:-1], word[-1] + "</w>"]
        cur = symbols[0]
        for sym in symbols[1:]:
            merged = cur + sym
            if merged not in vocab:
                if len(vocab) >= room:
                    break
                vocab[merged] = len(vocab)
            pair = f"{cur} {sym}"
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            cur = merged
    while len(vocab) < room:  # unreachable rows, as real checkpoints pad their embeddings
        vocab[f"<|unused{len(vocab)}|>"] = len(vocab)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def _norm_groups(channels: list[int]) -> int:
    """GroupNorm groups dividing every width (and the sums of skip connections): their gcd, <= 32."""
    g = math.gcd(*channels)
    return max(d for d in range(1, min(g, 32) + 1) if g % d == 0)


def build_debug_pipeline(entry: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Build the pipeline described by catalog `entry["debug"]` (schemas.catalog.DebugPipeline) into
    `out_dir`, atomically: built in `OUT.building`, renamed when complete."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    dims: dict[str, Any] = dict(entry["debug"])
    seed = int(dims.get("seed", 0))
    unet_channels = [int(c) for c in dims["unet_channels"]]
    vae_channels = [int(c) for c in dims["vae_channels"]]
    hidden = int(dims["text_hidden_size"])
    out = Path(out_dir)
    with building(out, seed, entry) as tmp:
        styles = ((entry.get("images") or {}).get("styles") or {}).values()
        words = list(
            dict.fromkeys([*_WORDS.split(), *(w for s in styles for w in s.replace(",", " ").split())])
        )
        vocab, merges = _vocab_and_merges(int(dims["vocab_size"]), words)
        # The files a real checkpoint's tokenizer/ holds; the tokenizer is then built from them and
        # save_pretrained adds tokenizer.json beside them.
        tok_dir = tmp / "tokenizer"
        tok_dir.mkdir()
        (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (tok_dir / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8"
        )
        tokenizer = CLIPTokenizer(
            str(tok_dir / "vocab.json"),
            str(tok_dir / "merges.txt"),
            model_max_length=MAX_LENGTH,
            bos_token=BOS,
            eos_token=EOS,
            unk_token=EOS,
            pad_token=EOS,
        )

        torch.manual_seed(seed)
        heads = max(1, hidden // 8)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=hidden,
                intermediate_size=hidden * 4,
                num_hidden_layers=int(dims["text_layers"]),
                num_attention_heads=heads if hidden % heads == 0 else 1,
                max_position_embeddings=MAX_LENGTH,
                bos_token_id=vocab[BOS],
                eos_token_id=vocab[EOS],
                pad_token_id=vocab[EOS],
            )
        )
        # Cross-attention only in the lowest-resolution block (and the mid block): attention at the
        # full latent resolution is what makes a 512x512 image cost tens of seconds (NOTES.md).
        levels = len(unet_channels)
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            block_out_channels=tuple(unet_channels),
            down_block_types=tuple(
                "CrossAttnDownBlock2D" if i == levels - 1 else "DownBlock2D" for i in range(levels)
            ),
            up_block_types=tuple("CrossAttnUpBlock2D" if i == 0 else "UpBlock2D" for i in range(levels)),
            layers_per_block=1,
            cross_attention_dim=hidden,
            attention_head_dim=max(1, unet_channels[-1] // 16),
            norm_num_groups=_norm_groups(unet_channels),
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=tuple(vae_channels),
            down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
            layers_per_block=1,
            norm_num_groups=_norm_groups(vae_channels),
            sample_size=512,
            mid_block_add_attention=False,  # self-attention over every latent pixel: slow, and adds nothing here
        )
        scheduler = EulerDiscreteScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type="epsilon",
            timestep_spacing="leading",
            steps_offset=1,
        )
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(tmp)
    return out
