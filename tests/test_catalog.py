"""The catalog (recipes/catalog/*.yaml) against the manuals' tables (REFERENCE.md), the planner's
helpers, and `zsconf catalog` in-process and as a subprocess."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import DEBUG_DIMS
from typer.testing import CliRunner

from zsconf import catalog as cat_mod
from zsconf.catalog import load_catalog
from zsconf.cli.main import app


@pytest.fixture(scope="module")
def cat():
    return load_catalog()


def test_loads_cached_and_torch_free(cat) -> None:
    assert load_catalog() is cat
    code = "import sys, zsconf.catalog as c; c.load_catalog(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


REQUIRED = [
    *(f"Qwen2-{s}" for s in ("0.5B", "1.5B", "7B", "72B", "72B-1K", "72B-32K")),
    *(f"Qwen2.5-{s}" for s in ("0.5B", "1.5B", "7B", "14B", "32B", "72B", "72B-1K", "72B-32K")),
    "Qwen-7B", "Qwen-14B", "Qwen-72B", "Qwen1.5-7B", "Qwen1.5-14B", "Qwen1.5-32B", "Qwen1.5-72B",
    "Llama2-7B", "Llama2-13B", "Llama2-70B", "Llama3-8B", "Llama3-70B", "Llama3.1-8B", "Llama3.1-70B",
    "GLM-4-9B", "ChatGLM3-6B", "Baichuan2-7B", "Baichuan2-13B", "Yi-6B", "Yi-34B",
    "DeepSeek-R1-Distill-Qwen-14B", "DeepSeek-R1-Distill-Qwen-32B", "DeepSeek-R1-Distill-Llama-8B",
    "DeepSeek-Coder-33B", "Qwen2-VL-7B", "debug/tiny-llama", "debug/tiny-qwen2",
    "StableDiffusion-V2.1", "debug/tiny-sd", "debug/tiny-qwen2-vl",
]  # fmt: skip


def test_every_required_model(cat) -> None:
    missing = [m for m in REQUIRED if m not in cat.models]
    assert not missing


# Table 6-6 in full: (model, method, lower, upper).
TABLE_6_6 = """Baichuan2-13B full 1200 1600|Baichuan2-13B lora 1300 1800|ChatGLM3-6B full 2000 2700|
ChatGLM3-6B lora 2300 3100|GLM-4-9B full 1800 2100|GLM-4-9B lora 2400 2800|Llama2-13B full 1300 1800|
Llama2-13B lora 1400 1900|Llama2-70B full 300 400|Llama2-70B lora 400 500|Llama2-7B full 3100 4200|
Llama2-7B lora 3500 4700|Llama3-70B full 300 400|Llama3-70B lora 300 500|Llama3-8B full 2100 2800|
Llama3-8B lora 2300 3100|Qwen-14B full 1200 1600|Qwen-14B lora 1400 1900|Qwen-72B full 300 400|
Qwen-72B lora 300 500|Qwen-7B full 2100 2900|Qwen-7B lora 2200 3000|Qwen1.5-14B full 1300 1700|
Qwen1.5-14B lora 1400 1800|Qwen1.5-32B full 600 800|Qwen1.5-32B lora 700 900|Qwen1.5-72B full 300 400|
Qwen1.5-72B lora 300 500|Qwen1.5-7B full 2200 3000|Qwen1.5-7B lora 2600 3600|Qwen2-0.5B full 12800 17300|
Qwen2-0.5B lora 12800 17300|Qwen2-1.5B full 7300 9800|Qwen2-1.5B lora 7300 9900|Qwen2-72B full 300 300|
Qwen2-72B lora 300 400|Qwen2-72B-1K full 300 300|Qwen2-72B-1K lora 300 400|Qwen2-7B full 2300 3200|
Qwen2-7B lora 2600 3500|Qwen2.5-72B full 100 120|Qwen2.5-72B lora 280 330|Qwen2.5-32B full 340 410|
Qwen2.5-32B lora 480 570|Qwen2.5-14B full 1120 1320|Qwen2.5-14B lora 1410 1660|
Qwen2.5-14B continued_pretrain 1120 1320|Qwen2.5-7B full 2459 2890|Qwen2.5-7B lora 3180 3750|
Qwen2.5-72B-1K full 250 300|Qwen2.5-72B-1K lora 340 400|Qwen2-VL-7B full 1500 1770|Qwen2-VL-7B lora 2100 2480"""
ROWS_6_6 = [row.split() for row in TABLE_6_6.replace("\n", "").split("|")]


def test_throughput_table_6_6_in_full(cat) -> None:
    for model, method, lo, hi in ROWS_6_6:
        assert cat.throughput(model, method) == (float(lo), float(hi)), (model, method)
    assert cat_mod.throughput("Qwen2.5-7B", "lora") == (3180, 3750)


def test_finetune_support_table_6_1(cat) -> None:
    in_table = {m for m, _, _, _ in ROWS_6_6}
    for name, entry in cat.models.items():
        if name.startswith("debug/"):
            text = entry.task == "text-generation"
            assert set(entry.finetune) == ({"full", "lora", "continued_pretrain"} if text else set())
            continue
        assert cat.supports_finetune(name, "full") == (name in in_table), name
        assert cat.supports_finetune(name, "lora") == (name in in_table), name
        assert cat.supports_finetune(name, "continued_pretrain") == (name == "Qwen2.5-14B"), name
    assert not cat_mod.supports_finetune("Llama3.1-8B", "lora")
    with pytest.raises(KeyError, match="does not support lora"):
        cat.throughput("Yi-34B", "lora")


def test_compression_table_7_2(cat) -> None:
    both = ["Llama2-7B", "Llama2-13B", "Llama2-70B", "Llama3-8B", "Llama3-70B", "Qwen1.5-7B", "Qwen1.5-14B",
            "Qwen1.5-72B", "Qwen2.5-32B"]  # fmt: skip
    # Qwen2.5-7B: SmoothQuant by the team contract (CONTRACTS.md §1), not table 7-2.
    sq_only = ["Qwen2-72B", "Qwen2-72B-1K", "Qwen2.5-72B", "Qwen2.5-7B"]
    for name, entry in cat.models.items():
        if name.startswith("debug/"):
            continue
        assert cat_mod.supports_compression(name, "smoothquant-w8a8") == (name in both + sq_only), name
        assert cat_mod.supports_compression(entry, "awq-w4a16") == (name in both), name
    assert not cat.supports_compression("Qwen2-72B", "awq-w4a16")
    # The WxAx rule: W8A8 = smoothquant-w8a8, W4A16 = awq-w4a16; others (and a KV part) need "*".
    assert cat.supports_compression("Qwen2-72B", "W8A8")
    assert not cat.supports_compression("Qwen2-72B", "W4A16")
    assert not cat.supports_compression("Llama2-7B", "W8A8C8")
    assert not cat.supports_compression("Llama2-7B", "gptq-w4a16")
    for debug in ("debug/tiny-llama", "debug/tiny-qwen2"):
        for s in (
            "smoothquant-w8a8",
            "awq-w4a16",
            "gptq-w4a16",
            "gptq-w8a8",
            "fp8-dynamic",
            "W8A8C8",
            "W4A8",
        ):
            assert cat.supports_compression(debug, s)


def test_compression_minutes_table_7_4(cat) -> None:
    m = {n: e.compression_minutes for n, e in cat.models.items()}
    for name in ("Llama2-7B", "Llama3-8B", "Qwen1.5-7B"):
        assert m[name] == {"smoothquant-w8a8": (5, 10), "awq-w4a16": (40, 40)}
    for name in ("Llama2-13B", "Qwen1.5-14B"):
        assert m[name]["awq-w4a16"] == (60, 60)
    for name in ("Llama2-70B", "Llama3-70B", "Qwen1.5-72B"):
        assert m[name] == {"smoothquant-w8a8": (20, 30), "awq-w4a16": (180, 180)}
    assert m["Qwen2-72B"] == m["Qwen2-72B-1K"] == {"smoothquant-w8a8": (20, 30)}
    assert m["Qwen2.5-72B"] == {"smoothquant-w8a8": (40, 40)}
    assert m["Qwen2.5-32B"] == {"smoothquant-w8a8": (20, 30), "awq-w4a16": (120, 120)}


QPS_8_2 = """Baichuan2-13B 1|Baichuan2-7B 3|ChatGLM3-6B 3|Llama2-13B 1|Llama2-70B 1|Llama2-7B 3|Llama3-70B 1|
Llama3-8B 3|Llama3.1-70B 1|Llama3.1-8B 3|Qwen1.5-14B 1|Qwen1.5-32B 1|Qwen1.5-72B 1|Qwen1.5-7B 3|Qwen-14B 1|
Qwen2-72B 1|Qwen2-72B-1K 1|Qwen2-72B-32K 1|Qwen2-7B 3|Qwen-72B 1|Qwen-7B 3|Qwen2-1.5B 6|Qwen2-0.5B 9|
Qwen2.5-0.5B 9|Qwen2.5-1.5B 6|Qwen2.5-7B 3|Qwen2.5-14B 1|Qwen2.5-72B 1|Qwen2.5-72B-32K 1|Qwen2.5-32B 1|
Qwen2.5-72B-1K 1|Qwen2-VL-7B 1|GLM-4-9B 3|Yi-34B 1|Yi-6B 3|DeepSeek-Coder-33B 1|DeepSeek-R1-Distill-Qwen-14B 1|
DeepSeek-R1-Distill-Qwen-32B 1|DeepSeek-R1-Distill-Llama-8B 3"""


def test_qps_table_8_2(cat) -> None:
    for row in QPS_8_2.replace("\n", "").split("|"):
        name, qps = row.split()
        assert cat.model(name).qps_per_instance == float(qps), name
    sq = {"Llama3-8B": 6, "Llama2-7B": 3, "Llama2-70B": 1, "Qwen2.5-72B": 1}
    for name, qps in sq.items():
        assert cat.model(name).qps_per_instance_quantized["smoothquant-w8a8"] == qps
    assert cat.model("Qwen2-7B").qps_per_instance_quantized == {"awq-w4a16": 3}
    assert cat_mod.recommended_instances("Llama3-8B", 12, "smoothquant-w8a8") == 2
    assert cat_mod.recommended_instances("Llama3-8B", 12) == 4
    assert cat.recommended_instances("Llama3-8B", 12, "awq-w4a16") == 4
    assert cat.recommended_instances("Qwen2-0.5B", 10) == 2
    assert cat.recommended_instances("Qwen2-0.5B", 0.5) == 1


def test_lengths_iterations_pre_post(cat) -> None:
    for name, entry in cat.models.items():
        if name.endswith("-32K"):
            assert entry.max_model_len == 32768
        elif name == "Qwen-14B":
            assert entry.max_model_len == 2048
        elif entry.task == "text-to-image":  # CLIP's 77-token prompt
            assert entry.max_model_len == 77
        elif not name.startswith("debug/"):
            assert entry.max_model_len == 4096, name
        assert entry.samples_per_iteration == (512 if name.endswith("-72B-1K") else 32), name
    pre = {
        "Qwen2.5-72B": 1.35,
        "Qwen2-72B": 1.35,
        "Qwen2.5-32B": 0.58,
        "Qwen2.5-14B": 0.25,
        "Qwen2.5-7B": 0.15,
    }
    for name, hours in pre.items():
        assert cat.model(name).pre_post_hours == hours


def test_formats_tables_6_2_and_6_7(cat) -> None:
    megatron = ["moss", "alpaca", "sharegpt", "csv", "xlsx"]
    assert cat.model("Llama2-7B").dataset_formats == megatron
    for name in ("Qwen2.5-7B", "Qwen2.5-32B", "Qwen2.5-72B-1K"):
        assert cat.model(name).dataset_formats == ["alpaca", "sharegpt", "csv", "xlsx"]
        assert cat.model(name).checkpoint_format == "huggingface"
    assert "pretrain" in cat.model("Qwen2.5-14B").dataset_formats
    for name in (
        "Baichuan2-13B",
        "ChatGLM3-6B",
        "GLM-4-9B",
        "Llama3-8B",
        "Qwen-7B",
        "Qwen1.5-7B",
        "Qwen2-7B",
    ):
        assert cat.model(name).checkpoint_format == "megatron"
    assert cat.model("Llama3.1-8B").checkpoint_format is None  # not fine-tunable


def test_debug_models_match_contract(cat) -> None:
    for name, arch in (("debug/tiny-llama", "llama"), ("debug/tiny-qwen2", "qwen2")):
        entry = cat.model(name)
        assert entry.architecture == arch
        assert entry.debug is not None and entry.debug.model_dump() == DEBUG_DIMS
        # The engine hands model_dump(mode="json") to runners.debug_models.
        assert entry.model_dump(mode="json")["debug"]["hidden_size"] == 128


def test_image_models(cat) -> None:
    """Text-to-image entries carry the manual's image API options (000 §5.5.2); a bad default or
    size is refused when the catalog loads."""
    from pydantic import ValidationError

    from schemas.catalog import ImageOptions, parse_size

    sd = cat.model("StableDiffusion-V2.1")
    assert sd.task == "text-to-image" and sd.images is not None and not sd.finetune and not sd.compression
    assert sd.images.sizes == ["360x640", "480x640", "512x512", "640x360", "640x480", "720x1280",
                               "1024x1024", "1280x720"]  # fmt: skip
    assert sd.images.default_size == "512x512" and sd.images.steps == (1, 50)
    assert list(sd.images.styles) == ["standard", "portrait", "landscape", "cartoon", "technology",
                                      "photography", "concept"]  # fmt: skip
    assert parse_size("360x640") == (360, 640)  # HEIGHTxWIDTH, the manual's order
    assert cat.model("debug/tiny-sd").images.styles == sd.images.styles
    assert cat.model("Qwen2-VL-7B").task == cat.model("debug/tiny-qwen2-vl").task == "image-understanding"
    good = sd.images.model_dump()
    for bad, match in (({"default_size": "256x256"}, "default_size"), ({"sizes": ["512by512"]}, "HEIGHTxWIDTH"),
                       ({"default_steps": 60}, "default_steps"), ({"default_style": "oil"}, "default_style")):  # fmt: skip
        with pytest.raises(ValidationError, match=match):
            ImageOptions.model_validate({**good, **bad})
    with pytest.raises(ValidationError, match="images: required"):
        type(sd).model_validate({**sd.model_dump(), "images": None})


def test_flavors(cat) -> None:
    one = cat.flavor("ascend.910b.1x")
    assert (one.cards, one.cpu, one.memory_gb, one.price_per_hour, one.price_per_month) == (
        1, 16, 128, 41.29, 24772.87)  # fmt: skip
    eight = cat.flavor("ascend.910b.8x")
    assert (eight.cards, eight.cpu, eight.memory_gb, eight.price_per_hour) == (8, 184, 1520, 330.30)
    assert cat.flavor("ascend.910b.8x.dedicated").price_per_hour is None
    assert cat.flavor("ascend.910b.8x.dedicated").price_per_month == 196000.00
    h800 = cat.flavor("nvidia.h800.8x")
    assert (h800.cards, h800.cpu, h800.memory_gb, h800.price_per_month) == (8, 224, 2048, 241212.00)
    small = cat.flavor("cpu.small")
    assert (small.device, small.cards, small.cpu) == ("cpu", 0, 2)
    for name in ("cpu.medium", "cpu.large", "nvidia.a100.1x", "nvidia.h100.1x", "nvidia.h100.8x"):
        assert cat.flavor(name).price_per_hour is not None


def test_unknown_names_suggest_close_ones(cat) -> None:
    with pytest.raises(KeyError) as err:
        cat.model("qwen2.5-7b")
    assert "Qwen2.5-7B" in str(err.value)
    with pytest.raises(KeyError) as err:
        cat.flavor("ascend.910b.2x")
    assert "ascend.910b.1x" in str(err.value) and "zsconf catalog flavors" in str(err.value)


def test_job_hours_formula(cat) -> None:
    # hours = 36 × iterations ÷ (cards × nodes × throughput) + pre/post; lower uses the upper throughput.
    lo, hi = cat_mod.job_hours("Qwen2.5-7B", "lora", 1000, 8, 2)
    assert lo == pytest.approx(36 * 1000 / (16 * 3750) + 0.15)
    assert hi == pytest.approx(36 * 1000 / (16 * 3180) + 0.15)
    # The -1K models use coefficient 146.
    lo, hi = cat.job_hours("Qwen2.5-72B-1K", "full", 100, 8, 1)
    assert (lo, hi) == pytest.approx((146 * 100 / (8 * 300) + 1.35, 146 * 100 / (8 * 250) + 1.35))
    # CPU flavors have 0 cards: one device.
    assert cat.job_hours("debug/tiny-qwen2", "lora", 10, 0, 1) == cat.job_hours(
        "debug/tiny-qwen2", "lora", 10, 1, 1
    )
    # The planner's keyword form; 32 × 4096 is the coefficient's own batch, 64 × 4096 doubles it.
    kw = dict(base="Qwen2.5-7B", method="full", iterations=100, cards=8)
    same = cat.job_hours(**kw, global_batch_size=32, sequence_length=4096)
    assert same == cat.job_hours("Qwen2.5-7B", "full", 100, 8)
    double = cat.job_hours(**kw, global_batch_size=64, sequence_length=4096)
    assert double[0] - 0.15 == pytest.approx(2 * (same[0] - 0.15))
    with pytest.raises(KeyError):
        cat.job_hours("Llama3.1-8B", "lora", 10)
    assert math.isclose(cat.estimates.coefficient, 36)


def test_extra_dirs_override(tmp_path) -> None:
    (tmp_path / "flavors.yaml").write_text(
        "flavors:\n  cpu.small: {device: cpu, cards: 0, cpu: 4, memory_gb: 16, price_per_hour: 1}\n"
    )
    cat = load_catalog([tmp_path])
    assert cat.flavor("cpu.small").cpu == 4
    assert "Qwen2.5-7B" in cat.models
    (tmp_path / "models.yaml").write_text("models:\n  X: {family: x, architecture: llama, typo: 1}\n")
    with pytest.raises(ValueError, match="typo"):
        load_catalog([tmp_path, tmp_path / "again"])


def test_cli_in_process() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["catalog", "models", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["Qwen2.5-7B"]["finetune"]["lora"] == [3180, 3750]
    res = runner.invoke(app, ["catalog", "flavors"])
    assert res.exit_code == 0 and "ascend.910b.1x\tnpu\t910B-64G\t1\t16" in res.stdout
    res = runner.invoke(app, ["catalog", "recipes", "--json"])
    names = {r["name"] for r in json.loads(res.stdout)}
    assert not any(n.startswith("catalog/") for n in names)
    assert {"finetune/lora", "compress/smoothquant-w8a8"} <= names


def test_cli_subprocess() -> None:
    exe = [sys.executable, "-m", "zsconf.cli.main"]
    out = subprocess.run([*exe, "catalog", "models"], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("model\ttask\tarch\tparams")
    assert any(
        line.startswith("Qwen2.5-7B\ttext-generation\tqwen2\t7.6B\t2459-2890\t3180-3750") for line in lines
    )
    assert any(line.startswith("debug/tiny-sd\ttext-to-image\t") for line in lines)
    out = subprocess.run([*exe, "catalog", "recipes"], capture_output=True, text=True, check=True)
    assert "finetune/lora\t" in out.stdout
