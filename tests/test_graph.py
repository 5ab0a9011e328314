"""The resource graph: references, order, and every graph error with both ends and a line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from zsconf.errors import StackError
from zsconf.graph import build_graph
from zsconf.loading import load_stack

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def catalog():
    from zsconf.catalog import load_catalog

    return load_catalog()


def graph_of(tmp_path: Path, text: str, catalog):
    (tmp_path / "stack.yaml").write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return build_graph(load_stack(tmp_path), catalog)


def graph_errors(tmp_path: Path, text: str, catalog) -> list:
    with pytest.raises(StackError) as info:
        graph_of(tmp_path, text, catalog)
    return info.value.diagnostics


HEAD = """
tenants:
  acme: {}
datasets:
  chats: {path: chats.jsonl, format: alpaca}
  corpus: {path: corpus.jsonl, format: pretrain}
models:
  base: {base: debug/tiny-qwen2}
"""


def test_quickstart_graph_order_and_closures(catalog) -> None:
    graph = build_graph(load_stack(REPO / "examples/stacks/quickstart"), catalog)
    order = graph.topological_order()
    assert order[0] == "tenant/demo"
    pos = {a: i for i, a in enumerate(order)}
    assert pos["model/demo/base"] < pos["finetune/demo/faq-lora"] < pos["compression/demo/faq-w8a8"]
    assert (
        pos["compression/demo/faq-w8a8"] < pos["deployment/demo/faq-chat"] < pos["service_group/demo/faq-app"]
    )
    deps = graph.dependencies("service_group/demo/faq-app")
    assert {
        "deployment/demo/faq-chat",
        "compression/demo/faq-w8a8",
        "dataset/demo/faq",
        "model/demo/base",
    } <= deps
    assert "evaluation/demo/eval-lora" not in deps
    assert "deployment/demo/faq-chat" in graph.dependents("model/demo/base")
    assert graph.bases["compression/demo/faq-w8a8"] == "debug/tiny-qwen2"
    assert graph.bases["deployment/demo/faq-chat"] == "debug/tiny-qwen2"
    with pytest.raises(KeyError):
        graph.dependencies("deployment/demo/nope")


def test_ascend_prod_graph(catalog) -> None:
    graph = build_graph(load_stack(REPO / "examples/stacks/ascend-prod"), catalog)
    assert "model/legal/legal-qwen25-7b" in graph.dependencies("service_group/legal/legal-tools")
    assert not any("/support/" in a for a in graph.dependencies("service_group/legal/legal-tools"))


def test_dangling_references_name_both_ends_and_line(tmp_path: Path, catalog) -> None:
    diags = graph_errors(
        tmp_path,
        HEAD
        + """
finetunes:
  ft:
    model: base
    datasets: {train: nope}
    output: {model: bot}
deployments:
  chat: {model: ghost@latest}
service_groups:
  app: {services: [chat, missing]}
""",
        catalog,
    )
    by_path = {d.path: d for d in diags}
    assert set(by_path) == {
        "finetunes.ft.datasets.train",
        "deployments.chat.model",
        "service_groups.app.services.1",
    }
    assert "finetune/acme/ft" in by_path["finetunes.ft.datasets.train"].message
    assert "'nope'" in by_path["finetunes.ft.datasets.train"].message
    assert by_path["finetunes.ft.datasets.train"].line == 12
    assert "'ghost'" in by_path["deployments.chat.model"].message
    assert by_path["service_groups.app.services.1"].line == 17


def test_cross_tenant_reference(tmp_path: Path, catalog) -> None:
    diags = graph_errors(
        tmp_path,
        "platform: {default_tenant: acme}\n"
        + HEAD.replace("tenants:\n  acme: {}", "tenants:\n  acme: {}\n  beta: {}")
        + """
  other-base: {base: debug/tiny-qwen2, tenant: beta}
  beta-tenant-model: {base: debug/tiny-qwen2, tenant: beta}
deployments:
  chat: {model: other-base@1}
  beta-chat: {model: base@1, tenant: beta}
""",
        catalog,
    )
    messages = [d.message for d in diags]
    assert len(diags) == 2 and all("cross-tenant" in m for m in messages)


def test_unknown_tenant(tmp_path: Path, catalog) -> None:
    diags = graph_errors(tmp_path, HEAD + "deployments:\n  chat: {model: base@1, tenant: zeta}\n", catalog)
    assert diags[0].path == "deployments.chat.tenant" and "'zeta'" in diags[0].message


def test_cycle_is_named(tmp_path: Path, catalog) -> None:
    diags = graph_errors(
        tmp_path,
        HEAD
        + """
finetunes:
  a:
    model: from-b
    datasets: {train: chats}
    output: {model: from-a}
  b:
    model: from-a
    datasets: {train: chats}
    output: {model: from-b}
""",
        catalog,
    )
    assert len(diags) == 1
    assert "reference cycle: finetune/acme/a -> finetune/acme/b -> finetune/acme/a" in diags[0].message
    assert diags[0].line is not None


def test_unsupported_method_and_strategy(tmp_path: Path, catalog) -> None:
    diags = graph_errors(
        tmp_path,
        """
tenants:
  acme: {}
datasets:
  corpus: {path: corpus.jsonl, format: pretrain}
models:
  q7: {base: Qwen2.5-7B}
  q72: {base: Qwen2-72B}
finetunes:
  cpt:
    model: q7
    method: continued_pretrain
    datasets: {train: corpus}
    output: {model: q7-cpt}
compressions:
  awq:
    model: q72
    strategy: awq-w4a16
    output: {model: q72-awq}
""",
        catalog,
    )
    by_path = {d.path: d for d in diags}
    assert set(by_path) == {"finetunes.cpt.method", "compressions.awq.strategy"}
    assert "Qwen2.5-7B" in by_path["finetunes.cpt.method"].message
    assert "table 7-2" in by_path["compressions.awq.strategy"].message


def test_base_of_a_job_output_is_its_inputs_base(tmp_path: Path, catalog) -> None:
    diags = graph_errors(
        tmp_path,
        """
tenants:
  acme: {}
datasets:
  chats: {path: chats.jsonl, format: alpaca}
models:
  q72: {base: Qwen2-72B}
finetunes:
  ft:
    model: q72
    datasets: {train: chats}
    resources: {flavor: ascend.910b.8x, nodes: 2}
    output: {model: tuned}
compressions:
  awq:
    model: tuned@latest
    strategy: awq-w4a16
    output: {model: tuned-awq}
""",
        catalog,
    )
    assert [d.path for d in diags] == ["compressions.awq.strategy"]
    assert "Qwen2-72B" in diags[0].message


def test_duplicate_new_model_and_bad_new_version(tmp_path: Path, catalog) -> None:
    diags = graph_errors(
        tmp_path,
        HEAD
        + """
finetunes:
  one:
    model: base
    datasets: {train: chats}
    output: {model: bot}
  two:
    model: base
    datasets: {train: chats}
    output: {model: bot}
  three:
    model: base
    datasets: {train: chats}
    output: {model: nowhere, mode: new_version}
  four:
    model: base
    datasets: {train: chats}
    output: {model: base}
""",
        catalog,
    )
    by_path = {d.path: d.message for d in diags}
    assert set(by_path) == {
        "finetunes.two.output.model",
        "finetunes.three.output.model",
        "finetunes.four.output.model",
    }
    assert "finetune/acme/one" in by_path["finetunes.two.output.model"]
    assert "new_version" in by_path["finetunes.four.output.model"]


def test_new_version_of_a_job_output_is_allowed(tmp_path: Path, catalog) -> None:
    graph = graph_of(
        tmp_path,
        HEAD
        + """
finetunes:
  one:
    model: base
    datasets: {train: chats}
    output: {model: bot}
  again:
    model: bot@latest
    datasets: {train: chats}
    output: {model: bot, mode: new_version}
deployments:
  chat: {model: bot@latest}
""",
        catalog,
    )
    assert {"finetune/acme/one", "finetune/acme/again"} <= graph.dependencies("deployment/acme/chat")


def test_dataset_format_must_fit_the_use(tmp_path: Path, catalog) -> None:
    diags = graph_errors(
        tmp_path,
        HEAD.replace("datasets:\n", "datasets:\n  table: {path: t.csv, format: csv}\n")
        + """
finetunes:
  cpt:
    model: base
    method: continued_pretrain
    datasets: {train: chats}
    output: {model: cpt}
  lora:
    model: base
    datasets: {train: corpus}
    output: {model: tuned}
evaluations:
  ev: {model: base@1, dataset: table}
""",
        catalog,
    )
    by_path = {d.path: d.message for d in diags}
    assert set(by_path) == {
        "finetunes.cpt.datasets.train",
        "finetunes.lora.datasets.train",
        "evaluations.ev.dataset",
    }
    assert "needs pretrain" in by_path["finetunes.cpt.datasets.train"]
    assert "alpaca or sharegpt" in by_path["evaluations.ev.dataset"]


def test_quotas(tmp_path: Path, catalog) -> None:
    diags = graph_errors(
        tmp_path,
        """
tenants:
  acme:
    quotas: {max_cards: 4, max_deployments: 1}
datasets:
  chats: {path: chats.jsonl, format: alpaca}
models:
  base: {base: debug/tiny-qwen2}
finetunes:
  big:
    model: base
    datasets: {train: chats}
    resources: {flavor: ascend.910b.8x, queue: fast}
    output: {model: bot}
deployments:
  a: {model: base@1, flavor: ascend.910b.1x, instances: 3}
  b: {model: base@1, flavor: ascend.910b.1x, instances: 2}
""",
        catalog,
    )
    by_path = {d.path: d.message for d in diags}
    assert set(by_path) == {
        "finetunes.big.resources",
        "finetunes.big.resources.queue",
        "tenants.acme.quotas.max_deployments",
        "tenants.acme.quotas.max_cards",
    }
    assert "needs 8 cards" in by_path["finetunes.big.resources"]
    assert "5 cards" in by_path["tenants.acme.quotas.max_cards"]


def test_quantized_models_are_for_serving(tmp_path: Path, catalog) -> None:
    diags = graph_errors(
        tmp_path,
        HEAD
        + """
compressions:
  q:
    model: base
    strategy: smoothquant-w8a8
    output: {model: base-q}
finetunes:
  ft:
    model: base-q@latest
    datasets: {train: chats}
    output: {model: bot}
""",
        catalog,
    )
    assert [d.path for d in diags] == ["finetunes.ft.model"]


def test_unknown_base_model_and_flavor(tmp_path: Path, catalog) -> None:
    diags = graph_errors(
        tmp_path,
        HEAD.replace("debug/tiny-qwen2", "Qwen9-1T")
        + "deployments:\n  chat: {model: base@1, flavor: quantum.1x}\n",
        catalog,
    )
    assert {d.path for d in diags} == {"models.base.base", "deployments.chat.flavor"}


def test_ten_thousand_resources_build(tmp_path: Path, catalog) -> None:
    """Scale smoke test (timings live in bench/cli.py): a generated 10k stack builds and orders."""
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    try:
        from cli import generate_stack
    finally:
        sys.path.pop(0)
    graph = build_graph(load_stack(generate_stack(tmp_path, 10000)), catalog)
    order = graph.topological_order()
    assert len(order) == len(graph.nodes) > 9000


@pytest.mark.parametrize("avx512", [False, True])
def test_a_model_the_chosen_engine_cannot_serve_is_refused(
    tmp_path: Path, catalog, avx512: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's CPU build serves W8A8 int8 and FP8 weights on any x86 CPU, 4-bit weights only with
    AVX-512: engine auto on a CPU flavor is vLLM here, so the W4A16 deployment is refused at its
    model on a CPU without AVX-512; the embedded engine (transformers) takes it."""
    monkeypatch.setattr("zsconf.serving._cpu_has_avx512", lambda: avx512)
    stack = HEAD + (
        "compressions:\n  fp8:\n    model: base@1\n    strategy: fp8-dynamic\n    output: {model: base-fp8}\n"
        "  int4:\n    model: base@1\n    strategy: gptq-w4a16\n    calibration: {dataset: chats}\n"
        "    output: {model: base-int4}\n"
        "deployments:\n  a: {model: base-int4@latest}\n  b: {model: base-fp8@latest}\n"
        "  c: {model: base-int4@latest, engine: embedded}\n"
    )
    if avx512:
        graph_of(tmp_path, stack, catalog)
        return
    diags = graph_errors(tmp_path, stack, catalog)
    assert [d.path for d in diags] == ["deployments.a.model"]
    assert diags[0].message.startswith(
        "base-int4@latest: vLLM's CPU build serves 4-bit weights (gptq-w4a16) only on CPUs with AVX-512"
    )


def test_at_most_ten_versions(tmp_path: Path, catalog) -> None:
    jobs = "".join(
        f"  v{i}:\n    model: base\n    datasets: {{train: chats}}\n    output: {{model: base, mode: new_version}}\n"
        for i in range(10)
    )
    diags = graph_errors(tmp_path, HEAD + "finetunes:\n" + jobs, catalog)
    assert [d.path for d in diags] == ["finetunes.v9.output.model"]
    assert "at most 10" in diags[0].message


def test_held_out_dataset_is_not_for_training(tmp_path: Path, catalog) -> None:
    diags = graph_errors(
        tmp_path,
        HEAD.replace("format: alpaca}", "format: alpaca, usage: evaluation}")
        + "finetunes:\n  ft:\n    model: base\n    datasets: {train: chats}\n    output: {model: bot}\n",
        catalog,
    )
    assert [d.path for d in diags] == ["finetunes.ft.datasets.train"]


def test_no_jobs_quota(tmp_path: Path, catalog) -> None:
    diags = graph_errors(
        tmp_path,
        HEAD.replace("acme: {}", "acme: {quotas: {max_concurrent_jobs: 0}}")
        + "evaluations:\n  ev: {model: base@1, dataset: chats}\n",
        catalog,
    )
    assert [d.path for d in diags] == ["evaluations.ev"]
