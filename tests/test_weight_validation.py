"""Weight validation: each platform message on a corrupted copy of the tiny model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runners.validate import MESSAGES, validate_weights

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def copy(tiny_qwen2: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(tiny_qwen2, dst)
    return dst


def _edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data))


def test_valid_model_passes(tiny_qwen2: Path) -> None:
    assert validate_weights(tiny_qwen2) == []


def test_config_unreadable(copy: Path) -> None:
    (copy / "config.json").write_text("{not json")
    assert validate_weights(copy) == [MESSAGES["config"]]
    assert MESSAGES["config"] == "Failed to read user config.json."


def test_generation_config_unreadable(copy: Path) -> None:
    (copy / "generation_config.json").write_text("nope")
    assert validate_weights(copy) == ["Failed to read generation_config.json."]


def test_do_sample_inconsistent(copy: Path) -> None:
    _edit(copy / "generation_config.json", do_sample=False, temperature=0.7)
    assert validate_weights(copy) == [
        "The value of do_sample is not set to true in generation_config.json, which is inconsistent with the "
        "configured sampling parameters such as temperature, top_p, top_k etc."
    ]
    _edit(copy / "generation_config.json", do_sample=True)
    assert validate_weights(copy) == []


def test_quantization_config_missing_and_extra(copy: Path) -> None:
    assert validate_weights(copy, quantized=True) == [
        "The quantization_config field is missing in config.json, please check whether it is awq quantization weight."
    ]
    _edit(copy / "config.json", quantization_config={"quant_method": "awq", "bits": 4})
    assert validate_weights(copy)[0] == (
        "There is an extra quantization_config field in config.json. Please check whether it is a non-quantized weight."
    )


@pytest.mark.parametrize(
    "key", ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "model_type"]
)
def test_structural_key_missing(copy: Path, key: str) -> None:
    _edit(copy / "config.json", **{key: None})
    assert validate_weights(copy) == [
        "Key fields describing the model structure are missing from config.json, or their values are "
        "inconsistent with standard open source."
    ]


def test_tokenizer_broken(copy: Path) -> None:
    (copy / "tokenizer.json").write_text("{broken")
    for f in ("tokenizer_config.json",):
        (copy / f).unlink(missing_ok=True)
    assert validate_weights(copy) == ["Error loading tokenizer in transformers."]


def test_weights_broken(copy: Path) -> None:
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(b"garbage")
    assert validate_weights(copy) == ["Error loading weights in transformers."]


def test_runner_process_writes_result(copy: Path, tmp_path: Path) -> None:
    (copy / "generation_config.json").write_text("nope")
    spec = tmp_path / "v.json"
    spec.write_text(
        json.dumps(
            {"run_id": "r", "address": "model/a/m@1", "workdir": str(tmp_path / "w"), "model_dir": str(copy)}
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "runners.validate", str(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    result = json.loads((tmp_path / "w" / "result.json").read_text())
    assert result["status"] == "failed"
    assert result["outputs"]["failures"] == ["Failed to read generation_config.json."]


def test_a_diffusers_pipeline_folder(tiny_sd: Path, tmp_path: Path) -> None:
    """A text-to-image model's folder (model_index.json and its components) is checked by loading
    it with diffusers; a missing index or component gets the platform-style message."""
    assert validate_weights(tiny_sd) == []
    broken = tmp_path / "sd"
    shutil.copytree(tiny_sd, broken)
    shutil.rmtree(broken / "unet")
    assert validate_weights(broken) == [MESSAGES["pipeline"]]
    (broken / "model_index.json").write_text("{not json")
    assert validate_weights(broken) == [MESSAGES["model_index"]]
