"""Compression runner on the tiny debug models (CPU): every strategy writes a compressed-tensors
folder that reloads and generates; AWQ really runs AWQ on Llama and Qwen2; sizes, perplexity and
gate are recorded; bad strategies and data are refused with clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runners.compress.strategies import plan_strategy
from runners.runfiles import UserError
from schemas.run_compress import CompressRunSpec

REPO = Path(__file__).resolve().parent.parent


def _spec(tmp: Path, model_dir: Path, strategy: str, calibration: dict | None = None, **spec: Any) -> dict:
    return {
        "run_id": "r-test",
        "address": f"compression/acme/{strategy}",
        "workdir": str(tmp / "work"),
        "output_dir": str(tmp / "out"),
        "spec": {
            "description": "test",
            "model": "base",
            "strategy": strategy,
            "output": {"model": "small", "description": "compressed"},
            "calibration": {"samples": 16, "sequence_length": 64},
            **spec,
        },
        "inputs": {
            "model_dir": str(model_dir),
            "datasets": {"calibration": calibration} if calibration else {},
        },
    }


def _compress(tmp: Path, model_dir: Path, strategy: str, **kw: Any) -> dict:
    from runners.compress.run import compress
    from runners.runfiles import RunFiles

    run = CompressRunSpec.model_validate(_spec(tmp, model_dir, strategy, **kw))
    return compress(run, RunFiles(run.workdir))


def _reload_and_generate(folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tok("Quantization stores weights", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def _tensor(folder: Path, name: str) -> Any:
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            if name in st.keys():  # noqa: SIM118 - safe_open handles have keys(), not __contains__
                return st.get_tensor(name)
    raise KeyError(name)


# --- pure planning: no torch --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "algorithm", "scheme", "kv"),
    [
        ("smoothquant-w8a8", "smoothquant+gptq", "W8A8", None),
        ("awq-w4a16", "awq", "W4A16", None),
        ("fp8-dynamic", "rtn", "FP8_DYNAMIC", None),
        ("W4A16", "gptq", "W4A16", None),
        ("W8A8C8", "gptq", "W8A8", 8),
        ("W8A16C16", "gptq", "W8A16", None),
    ],
)
def test_plan_strategy(strategy: str, algorithm: str, scheme: str, kv: int | None) -> None:
    plan = plan_strategy(strategy)
    assert (plan.algorithm, plan.scheme, plan.kv_cache_bits) == (algorithm, scheme, kv)
    assert plan.needs_calibration == (strategy != "fp8-dynamic")


@pytest.mark.parametrize("strategy", ["W4A4", "W16A16", "W8A8C4", "W16A8"])
def test_unsupported_combinations_refused(strategy: str) -> None:
    with pytest.raises(UserError, match=strategy):
        plan_strategy(strategy)


def test_unsupported_strategy_exits_1_with_message(tmp_path: Path, tiny_llama: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec(tmp_path, tiny_llama, "W4A4")))
    proc = subprocess.run(
        [sys.executable, "-m", "runners.compress", str(spec)], cwd=REPO, capture_output=True
    )
    assert proc.returncode == 1
    result = json.loads((tmp_path / "work" / "result.json").read_text())
    assert result["status"] == "failed" and "W4A4 is not supported" in result["error"]
    assert not (tmp_path / "out").exists()


def test_bad_calibration_line_named(tmp_path: Path, tiny_llama: Path) -> None:
    data = tmp_path / "cal.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"cal\.jsonl: line 2: expected a JSON object, got an array"):
        _compress(tmp_path, tiny_llama, "gptq-w8a8", calibration={"path": str(data), "format": "alpaca"})


# --- real compression ---------------------------------------------------------------------------


def test_cpu_guard_skips_pinning_only_while_active() -> None:
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    from runners.compress.cpu_guard import no_pinning_without_accelerator

    original = IntermediatesCache.pin_memory
    with no_pinning_without_accelerator() as active:
        assert active == (not torch.accelerator.is_available())
        if active:
            assert IntermediatesCache.pin_memory is not original
    assert IntermediatesCache.pin_memory is original


EXPECTED_FORMAT = {
    "smoothquant-w8a8": "int-quantized",
    "gptq-w8a8": "int-quantized",
    "gptq-w4a16": "pack-quantized",
    "fp8-dynamic": "float-quantized",
    "W8A8C8": "int-quantized",
}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(EXPECTED_FORMAT))
def test_strategy_writes_compressed_tensors(tmp_path: Path, tiny_llama: Path, strategy: str) -> None:
    out = _compress(tmp_path, tiny_llama, strategy, gate={"max_perplexity_increase": "50%"})
    folder = Path(out["model_dir"])
    qcfg = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qcfg["quant_method"] == "compressed-tensors"
    assert qcfg["format"] == EXPECTED_FORMAT[strategy]
    group = next(iter(qcfg["config_groups"].values()))
    if strategy == "fp8-dynamic":
        assert group["weights"]["type"] == "float" and group["input_activations"]["dynamic"] is True
    else:
        assert group["weights"]["num_bits"] == (4 if "w4" in strategy.lower() else 8)
    if strategy == "gptq-w4a16":
        assert group["weights"]["group_size"] == 128 and group["input_activations"] is None
    if strategy in ("smoothquant-w8a8", "gptq-w8a8", "W8A8C8"):
        acts = group["input_activations"]
        assert (acts["num_bits"], acts["strategy"], acts["dynamic"]) == (8, "token", True)
        assert group["weights"]["strategy"] == "channel"
    if strategy == "W8A8C8":
        assert qcfg["kv_cache_scheme"]["num_bits"] == 8 and qcfg["kv_cache_scheme"]["type"] == "float"
    else:
        assert qcfg.get("kv_cache_scheme") is None
    if strategy != "smoothquant-w8a8":  # only SmoothQuant/AWQ fold scales into the norms
        import torch

        key = "model.layers.0.input_layernorm.weight"
        assert torch.equal(_tensor(tiny_llama, key), _tensor(folder, key))
    for name in ("tokenizer.json", "generation_config.json", "chat_template.jinja"):
        assert (folder / name).is_file(), name
    assert not list(tmp_path.glob(".out.partial-*"))  # atomic: no partial folder left
    assert out["size_bytes_after"] < out["size_bytes_before"] and 0 < out["size_ratio"] < 1
    assert out["perplexity_before"] > 1 and out["perplexity_after"] > 1
    expected_increase = (out["perplexity_after"] - out["perplexity_before"]) / out["perplexity_before"]
    assert out["perplexity_increase"] == pytest.approx(expected_increase)
    assert out["gate"] == {"max_perplexity_increase": 0.5, "passed": True}
    assert out["calibration"]["samples"] == (0 if strategy == "fp8-dynamic" else 16)
    _reload_and_generate(folder)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_awq_really_runs_awq(tmp_path: Path, arch: str, request: pytest.FixtureRequest) -> None:
    import torch

    base: Path = request.getfixturevalue(arch)
    out = _compress(tmp_path, base, "awq-w4a16")
    folder = Path(out["model_dir"])
    qcfg = json.loads((folder / "config.json").read_text())["quantization_config"]
    group = next(iter(qcfg["config_groups"].values()))
    assert qcfg["format"] == "pack-quantized" and group["weights"]["group_size"] == 128
    assert out["quantization"]["algorithm"] == "awq"
    # Evidence of AWQ: it folds its per-channel scales into the norms feeding the attention and
    # MLP projections. Quantization alone (RTN/GPTQ) never touches a norm's weights.
    changed = 0
    for layer in range(2):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            key = f"model.layers.{layer}.{norm}.weight"
            changed += not torch.equal(_tensor(base, key), _tensor(folder, key))
    assert changed >= 3
    assert out["cpu_pinning_guard"] == (not torch.accelerator.is_available())
    _reload_and_generate(folder)


@pytest.mark.slow
def test_runner_process_with_dataset_and_empty_samples(tmp_path: Path, tiny_qwen2: Path) -> None:
    """End to end through `python -m runners.compress`, calibrating AWQ on Qwen2 from an alpaca
    dataset; then empty calibration texts (the Qwen2 'indices' FloatTensor failure) are dropped."""
    data = tmp_path / "cal.jsonl"
    rows = [{"instruction": f"Question {i}: what is {i} plus {i}?", "output": f"{2 * i}"} for i in range(12)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = _spec(tmp_path, tiny_qwen2, "awq-w4a16", calibration={"path": str(data), "format": "alpaca"})
    spec["spec"]["calibration"] = {"samples": 8, "sequence_length": 64}
    spec["spec"]["gate"] = {"max_perplexity_increase": "0%"}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "runners.compress", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "work" / "result.json").read_text())
    o = result["outputs"]
    assert result["status"] == "succeeded"
    assert o["calibration"]["samples"] == 8 and o["heldout"]["samples"] == 4  # 12 read: 8 + 4 held out
    assert o["gate"]["passed"] == (o["perplexity_increase"] <= 0)
    events = [
        json.loads(line)["event"] for line in (tmp_path / "work" / "events.jsonl").read_text().splitlines()
    ]
    assert events[0] == "started" and events[-1] == "succeeded"

    # Empty texts are dropped, not fed to the model as float tensors. The dataset reader refuses
    # empty samples already (the platform's rule); this keeps any empty text out of oneshot.
    from transformers import AutoTokenizer

    from runners.compress.run import _tokenized_dataset

    ds = _tokenized_dataset(["", "line 1 中文", ""], AutoTokenizer.from_pretrained(tiny_qwen2), 64)
    assert len(ds) == 1 and all(isinstance(t, int) for t in ds[0]["input_ids"]) and ds[0]["input_ids"]


def test_gate_verdict() -> None:
    from runners.compress.run import gate_passed

    assert gate_passed(0.10, None) is True
    assert gate_passed(0.04, 0.05) is True
    assert gate_passed(0.06, 0.05) is False
