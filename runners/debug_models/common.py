"""What the debug model builders share (text in `__init__`, `vision`, `diffusion`): the bundled
corpus, a byte-level BPE tokenizer trained on it, and the build folder that takes the final name
only once the model is complete. Imports torch and transformers inside functions only.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["CORPUS", "building", "train_tokenizer"]

CORPUS = Path(__file__).with_name("corpus.txt")


def train_tokenizer(specials: dict[str, Any], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on CORPUS with the family's special tokens (`extra`),
    `bos`/`eos`/`pad` and chat `template`, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials["extra"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: no unknown tokens, ever
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.read_text(encoding="utf-8").splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=specials["bos"],
        eos_token=specials["eos"],
        pad_token=specials["pad"],
        padding_side="left",  # decoder-only generation pads on the left
    )
    fast.chat_template = specials["template"]
    return fast


@contextmanager
def building(out: Path, seed: int, entry: dict[str, Any]) -> Iterator[Path]:
    """A fresh `OUT.building` folder to save the model into; when the block ends without an error
    it gets zsconf_debug_model.json and takes OUT's name, so a half-built folder never has it."""
    tmp = out.with_name(out.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    yield tmp
    (tmp / "zsconf_debug_model.json").write_text(json.dumps({"seed": seed, "entry": entry}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
