"""Build the catalog's debug base models (`debug/tiny-llama`, `debug/tiny-qwen2`) offline.

Random weights from a fixed seed, a byte-level BPE tokenizer trained locally on a small bundled
Chinese/English corpus, and a chat template; saved with `save_pretrained` so everything downstream
loads it with `from_pretrained` exactly like a real checkpoint.

Called by `python -m runners.debug_models SPEC.json` (the engine, when a stack uses a debug base)
and by tests. Imports torch and transformers: never import it from the control plane.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runners.debug_models.common import building, train_tokenizer

__all__ = ["CHATML_TEMPLATE", "LLAMA3_TEMPLATE", "build_debug_model"]


# ChatML as Qwen2 writes it. Tools (a list of JSON schemas) go into the system turn inside
# <tools></tools>; a `function_call` turn, or an assistant turn with OpenAI `tool_calls`, is the
# assistant's <tool_call>; a `tool` turn (ShareGPT observation) is a user <tool_response>.
# Without tools and those roles it is plain ChatML.
CHATML_TEMPLATE = (
    "{% set ns = namespace(skip_system=false) %}"
    "{% if tools %}"
    "{{ '<|im_start|>system\n' }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\n\n' }}{% set ns.skip_system = true %}"
    "{% endif %}"
    "{{ '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n'"
    " + 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}"
    "{% for tool in tools %}{{ '\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '\n</tools>\n\nFor each function call, return a json object with function name and '"
    " + 'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n'"
    ' + \'{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n\' }}'
    "{% endif %}"
    "{% for message in messages %}"
    "{% if loop.first and ns.skip_system %}"
    "{% elif message['role'] == 'function_call' %}"
    "{{ '<|im_start|>assistant\n<tool_call>\n' + message['content'] + '\n</tool_call><|im_end|>\n' }}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{ '<|im_start|>assistant' }}{% if message['content'] %}{{ '\n' + message['content'] }}{% endif %}"
    "{% for call in message['tool_calls'] %}{% set fn = call['function'] or call %}"
    "{{ '\n<tool_call>\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' + fn['arguments'] + '}\n</tool_call>' }}"
    "{% endfor %}{{ '<|im_end|>\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

_SPECIALS = {
    "qwen2": {
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "extra": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "template": CHATML_TEMPLATE,
    },
    "llama": {
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|end_of_text|>",
        "extra": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        "template": LLAMA3_TEMPLATE,
    },
}


def build_debug_model(entry: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Build the debug model described by catalog `entry` (its `architecture` and `debug` keys)
    into `out_dir`, atomically: a half-built folder is never left under the final name.
    Text-to-image and image-understanding entries (`task`) go to their own builders."""
    task = entry.get("task", "text-generation")
    if task == "text-to-image":
        from runners.debug_models.diffusion import build_debug_pipeline

        return build_debug_pipeline(entry, out_dir)
    if task == "image-understanding":
        from runners.debug_models.vision import build_debug_vl_model

        return build_debug_vl_model(entry, out_dir)
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    arch = entry["architecture"]
    dims: dict[str, Any] = dict(entry["debug"])
    seed = int(dims.pop("seed", 0))
    vocab_size = int(dims.pop("vocab_size", 2048))
    tokenizer = train_tokenizer(_SPECIALS[arch], vocab_size)
    config_cls, model_cls = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **dims,
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config = GenerationConfig(
        do_sample=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = Path(out_dir)
    with building(out, seed, entry) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
