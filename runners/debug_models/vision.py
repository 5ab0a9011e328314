"""Build a tiny debug Qwen2-VL (image understanding) offline, like `build_debug_model` builds text ones.

Random weights from a fixed seed (a 2-layer text model and a 2-block vision tower), a byte-level BPE
tokenizer trained locally on the bundled corpus with Qwen2-VL's special tokens, Qwen2-VL's chat
template (an image part renders as `<|vision_start|><|image_pad|><|vision_end|>`), and the processor
settings (an image processor that keeps images small: 4 to 16 tokens); saved with `save_pretrained`
where transformers can, so transformers and vLLM load the folder like a real checkpoint.

torchvision: transformers 5 cannot build a `Qwen2VLProcessor` without a `Qwen2VLVideoProcessor`, which
is torchvision-only, so processor_config.json is written by hand (what `save_pretrained` writes) and
the build needs no torchvision. Loading the processor does: `AutoProcessor`/`Qwen2VLProcessor
.from_pretrained`, and vLLM 0.32's qwen2_vl module (it imports transformers' torchvision image
processor module). Without torchvision, `Qwen2VLImageProcessorPil.from_pretrained` plus the
tokenizer read the same folder.

Imports torch and transformers inside the function only: never import them from the control plane.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runners.debug_models.common import building, train_tokenizer

__all__ = ["QWEN2_VL_TEMPLATE", "VL_DEFAULTS", "build_debug_vl_model"]

# Qwen2-VL's own template without its default system turn (like the text debug models' ChatML): a
# string content is text; a list content renders text parts as they are and each image part
# (`image`, `image_url`, or OpenAI's {"type": "image_url"}) as one vision block, which the
# processor expands to one <|image_pad|> per merged patch.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Picture ' + image_count.value | string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Video ' + video_count.value | string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# entry["debug"] keys this builder reads, with their defaults.
VL_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "vocab_size": 2048,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vision_depth": 2,
    "vision_embed_dim": 64,
    "vision_num_heads": 4,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    # 28x28-pixel units (patch 14 x merge 2): an image becomes 4 to 16 tokens for the language model.
    "image_min_pixels": 4 * 28 * 28,
    "image_max_pixels": 16 * 28 * 28,
}


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's [16, 24, 24] (temporal, height, width) scaled to `head_dim`: its sum must be
    head_dim / 2 (the rotary frequencies), which vLLM and transformers both check."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _write_processor_config(folder: Path, image: dict[str, Any]) -> None:
    """processor_config.json as `Qwen2VLProcessor.save_pretrained` writes it (transformers 5 nests
    the sub-processors' settings in it), written by hand: the processor cannot be constructed
    without a `Qwen2VLVideoProcessor`, which needs torchvision. Loading it
    (`Qwen2VLProcessor.from_pretrained`, `AutoProcessor`, vLLM) still needs torchvision."""
    video = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        **{k: image[k] for k in ("do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean",
                                 "image_std", "merge_size", "patch_size", "resample", "rescale_factor", "size",
                                 "temporal_patch_size")},
    }  # fmt: skip
    processor = {"processor_class": "Qwen2VLProcessor", "image_processor": image, "video_processor": video}
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2, sort_keys=True) + "\n")


def build_debug_vl_model(entry: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Build the tiny Qwen2-VL described by catalog `entry["debug"]` (keys and defaults:
    `VL_DEFAULTS`) into `out_dir`, atomically: a half-built folder is never left under the final name."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    dims: dict[str, Any] = {**VL_DEFAULTS, **dict(entry.get("debug") or {})}
    unknown = set(dims) - set(VL_DEFAULTS)
    if unknown:
        raise ValueError(
            f"debug Qwen2-VL: unknown debug keys {sorted(unknown)}; known: {sorted(VL_DEFAULTS)}"
        )
    seed = int(dims["seed"])
    hidden = int(dims["hidden_size"])
    heads = int(dims["num_attention_heads"])
    tokenizer = train_tokenizer(
        {
            "bos": None,
            "eos": "<|im_end|>",
            "pad": "<|endoftext|>",
            "extra": _SPECIALS,
            "template": QWEN2_VL_TEMPLATE,
        },
        int(dims["vocab_size"]),
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIALS}
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": int(dims["intermediate_size"]),
        "num_hidden_layers": int(dims["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(dims["num_key_value_heads"]),
        "max_position_embeddings": int(dims["max_position_embeddings"]),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": _mrope_section(hidden // heads),
        },
        "bos_token_id": None,
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    vision_config = {
        "depth": int(dims["vision_depth"]),
        "embed_dim": int(dims["vision_embed_dim"]),
        "num_heads": int(dims["vision_num_heads"]),
        "hidden_size": hidden,  # the merger's output feeds the language model's embeddings
        "mlp_ratio": 4,
        "in_channels": 3,
        "patch_size": int(dims["patch_size"]),
        "spatial_merge_size": int(dims["spatial_merge_size"]),
        "temporal_patch_size": int(dims["temporal_patch_size"]),
    }
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        do_sample=False,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=int(dims["image_min_pixels"]),
        max_pixels=int(dims["image_max_pixels"]),
        patch_size=int(dims["patch_size"]),
        temporal_patch_size=int(dims["temporal_patch_size"]),
        merge_size=int(dims["spatial_merge_size"]),
    )
    out = Path(out_dir)
    with building(out, seed, entry) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
        image_processor.save_pretrained(tmp)  # preprocessor_config.json
        _write_processor_config(tmp, image_processor.to_dict())
    return out
