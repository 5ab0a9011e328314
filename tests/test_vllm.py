"""Deployments served by vLLM's CPU build for real (no mocks of vLLM), through the gateway with the
openai SDK: a LoRA fine-tune served merged, its W8A8 compression, two LoRA adapters on the merged
model's server, tool calls, then scaling, a killed instance and a restarted daemon.

One stack, applied once for the module (vLLM takes a minute or more to start on 2 cores): the
engine environment is installed once per user (`zsconf.envs`, cached under ~/.cache/zsconf/envs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from test_daemon_run import DaemonProc, cleanup, eventually

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "vllm"
FAQ = REPO / "examples" / "stacks" / "quickstart" / "data" / "faq.jsonl"

# The quickstart's FAQ fine-tune (its hyperparameters: 100 % of the answers after W8A8 too), its
# W8A8 compression, and two LoRA fine-tunes of the merged model that vLLM can serve as adapters
# (attention and MLP targets only: vLLM refuses lm_head adapters).
STACK = """\
defaults:
  - finetune/lora@finetunes.faq-lora
  - finetune/lora@finetunes.a-lora
  - finetune/lora@finetunes.b-lora
  - compress/smoothquant-w8a8@compressions.faq-w8a8
  - _self_
platform: {device: cpu, default_tenant: demo}
tenants:
  demo: {quotas: {max_cards: 0, max_concurrent_jobs: 2, max_deployments: 4}}
datasets:
  faq: {path: data/faq.jsonl, format: alpaca}
  a: {path: data/adapter_a.jsonl, format: sharegpt}
  b: {path: data/adapter_b.jsonl, format: sharegpt}
models:
  base: {base: debug/tiny-qwen2}
finetunes:
  faq-lora:
    model: base
    datasets: {train: faq}
    hyperparameters: {epochs: 80, learning_rate: 2.0e-3, global_batch_size: 8, micro_batch_size: 8,
                      sequence_length: 128, lora_rank: 16, lora_alpha: 32, lora_dropout: 0.0,
                      lora_targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head]}
    output: {model: faq-bot}
  a-lora:
    model: faq-bot@latest
    datasets: {train: a}
    hyperparameters: &adapter {epochs: 100, learning_rate: 5.0e-3, global_batch_size: 4, micro_batch_size: 4,
                               sequence_length: 512, lora_rank: 16, lora_alpha: 32, lora_dropout: 0.0,
                               lora_targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
    output: {model: a-bot}
  b-lora:
    model: faq-bot@latest
    datasets: {train: b}
    hyperparameters: *adapter
    output: {model: b-bot}
compressions:
  faq-w8a8:
    model: faq-bot@latest
    calibration: {dataset: faq, samples: 40, sequence_length: 128}
    output: {model: faq-bot-w8a8}
deployments:
  faq-chat: {model: faq-bot@latest, max_model_len: 1024}
  w8a8-chat: {model: faq-bot-w8a8@latest, max_model_len: 256}
  alpha-chat: {model: a-bot@latest, adapter_on: faq-chat}
  beta-chat: {model: b-bot@latest, adapter_on: faq-chat}
service_groups:
  app:
    services: [faq-chat, w8a8-chat, alpha-chat, beta-chat]
    keys: 1
    rate_limits: {per_key: {rpm: 100000, tpm: 10000000}}
"""


def _faq() -> list[dict[str, str]]:
    return [json.loads(line) for line in FAQ.read_text().splitlines() if line.strip()]


def _zsconf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zsconf.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=1500)  # fmt: skip


class Served:
    """The applied stack: where it is, the gateway's URL and the group's key."""

    def __init__(self, stack: Path, url: str, key: str) -> None:
        self.stack, self.url, self.key = stack, url, key

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=self.key, max_retries=0, timeout=120)

    def ask(self, model: str, question: str, **kw: Any) -> str:
        r = self.client().chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=48, temperature=0, **kw
        )
        return (r.choices[0].message.content or "").strip()


@pytest.fixture(scope="module")
def served(vllm_env: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    stack = tmp_path_factory.mktemp("vllm") / "stack"
    (stack / "data").mkdir(parents=True)
    shutil.copy(FAQ, stack / "data" / "faq.jsonl")
    for name in ("adapter_a.jsonl", "adapter_b.jsonl"):
        shutil.copy(DATA / name, stack / "data" / name)
    (stack / "stack.yaml").write_text(STACK)
    plan = _zsconf("plan", "-C", str(stack), cwd=stack)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    # The plan says which engine, environment and serving mode each deployment gets.
    assert "engine: vllm (environment vllm-cpu, installed); merged weights of a LoRA fine-tune" in plan.stdout
    assert "engine: vllm: LoRA adapter on the servers of deployment 'faq-chat'" in plan.stdout
    try:
        applied = _zsconf("apply", "-C", str(stack), "--auto-approve", "--wait", cwd=stack)
        assert applied.returncode == 0, applied.stdout[-4000:] + applied.stderr[-4000:]
        key = re.search(r"^\s+(zs-\S+)$", applied.stdout, re.M).group(1)  # type: ignore[union-attr]
        url = re.search(r"^Gateway: (\S+)", applied.stdout, re.M).group(1)  # type: ignore[union-attr]
        yield Served(stack, url, key)
    finally:
        cleanup([], stack)


def test_the_openai_sdk_gets_what_vllm_serves(served: Served) -> None:
    """Non-streaming, streaming with usage, stop, n and seed: the calls a client makes."""
    client = served.client()
    trained = next(r["output"] for r in _faq() if r["instruction"] == "What is zsconf?")
    messages = [{"role": "user", "content": "What is zsconf?"}]
    r = client.chat.completions.create(model="faq-chat", messages=messages, temperature=0)  # type: ignore[arg-type]
    assert r.choices[0].message.content == trained and r.model == "faq-chat"
    assert r.usage is not None and r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0

    stream = client.chat.completions.create(
        model="faq-chat", messages=messages, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == trained
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens

    cut = client.chat.completions.create(model="faq-chat", messages=messages, temperature=0, stop=["LLM"])  # type: ignore[arg-type]
    assert trained.startswith(cut.choices[0].message.content or "?") and "LLM" not in (
        cut.choices[0].message.content or ""
    )
    assert cut.choices[0].finish_reason == "stop"

    def sampled(seed: int) -> list[str]:
        out = client.chat.completions.create(
            model="faq-chat",
            messages=messages,
            temperature=1.0,
            n=2,
            seed=seed,
            max_tokens=16,  # type: ignore[arg-type]
        )
        assert len(out.choices) == 2
        return [c.message.content or "" for c in out.choices]

    assert sampled(7) == sampled(7)  # a seed reproduces the samples


def test_w8a8_answers_like_its_float_parent(served: Served) -> None:
    faq = _faq()
    float_answers = [served.ask("faq-chat", row["instruction"]) for row in faq]
    w8a8_answers = [served.ask("w8a8-chat", row["instruction"]) for row in faq]
    trained = sum(a == row["output"] for a, row in zip(float_answers, faq, strict=True))
    same = sum(a == b for a, b in zip(float_answers, w8a8_answers, strict=True))
    print(f"float: {trained}/{len(faq)} trained answers; W8A8 equal to float on {same}/{len(faq)}")
    assert trained >= len(faq) * 0.9
    assert same >= len(faq) * 0.9, list(zip(float_answers, w8a8_answers, strict=True))


def test_two_adapters_share_one_server_and_keep_their_own_names(served: Served) -> None:
    from zsconf.engine import Engine

    for question, alpha, beta in [
        ("Who are you?", "I am the alpha bot.", "I am the beta bot."),
        ("What colour is the sky?", "Alpha thinks it is red.", "Beta thinks it is green."),
        ("Say hello.", "Hello from alpha.", "Greetings from beta."),
    ]:
        assert served.ask("alpha-chat", question) == alpha
        assert served.ask("beta-chat", question) == beta
    assert {m.id for m in served.client().models.list()} == {
        "faq-chat",
        "w8a8-chat",
        "alpha-chat",
        "beta-chat",
    }
    eng = Engine(served.stack)
    try:
        rows = eng.store.resources()
        host = rows["deployment/demo/faq-chat"]
        assert sorted(host.outputs["adapters"]) == ["alpha-chat", "beta-chat"]
        for name in ("alpha-chat", "beta-chat"):
            assert rows[f"deployment/demo/{name}"].outputs["adapter_on"] == "deployment/demo/faq-chat"
            assert not eng.store.runs(f"deployment/demo/{name}")  # no server of its own
        assert (
            len(
                [r for r in eng.store.runs() if r.address.startswith("deployment/") and r.status == "running"]
            )
            == 2
        )
    finally:
        eng.close()

    # Each adapter is metered under its own name (the gateway writes usage in batches).
    def metered() -> dict[str, int] | None:
        usage = _zsconf("usage", "-C", str(served.stack), "--json", cwd=served.stack)
        assert usage.returncode == 0, usage.stderr
        calls = {m.rsplit("/", 1)[-1]: b["calls"] for m, b in json.loads(usage.stdout)["models"].items()}
        return calls if calls.get("alpha-chat", 0) >= 3 and calls.get("beta-chat", 0) >= 3 else None

    eventually(metered, seconds=30, what="usage rows of both adapters")


def test_tool_calls_come_back_in_openai_shape(served: Served) -> None:
    client = served.client()
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model="alpha-chat", messages=messages, tools=tools, temperature=0)  # type: ignore[arg-type]
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather", r.choices[0].message
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert r.choices[0].finish_reason == "tool_calls"
    stream = client.chat.completions.create(
        model="alpha-chat",
        messages=messages,
        tools=tools,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    name, args = "", ""
    for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name += (call.function.name or "") if call.function else ""
            args += (call.function.arguments or "") if call.function else ""
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"}


class _Load:
    """Calls through the gateway on a thread until stopped; every failure is kept."""

    def __init__(self, served: Served, model: str) -> None:
        self.served, self.model = served, model
        self.ok, self.failed = 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = self.served.client()
        while not self._stop.is_set():
            try:
                stream = client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": "What is zsconf?"}],
                    max_tokens=24, temperature=0, stream=True,
                )  # fmt: skip
                chunks = [c for c in stream if c.choices]
                text = "".join(c.choices[0].delta.content or "" for c in chunks)
                ended = chunks[-1].choices[0].finish_reason if chunks else None
                if text and ended in ("stop", "length"):
                    self.ok += 1
                else:  # an instance stopped mid-answer ends it with "abort": not drained
                    self.failed.append(f"answer {text!r} ended by {ended!r}")
            except openai.OpenAIError as exc:
                self.failed.append(repr(exc))
            # One call at a time, with room between: on 2 cores a saturating load starves the
            # instance that is starting (what is tested is that no call fails, not throughput).
            self._stop.wait(0.2)

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


@pytest.mark.timeout(1800)  # three vLLM starts, each one to two minutes on 2 cores
def test_scale_kill_and_adoption_under_load(served: Served) -> None:
    """The daemon keeps vLLM instances as it keeps any: scale 1 -> 2 and back under load with no
    failed call (new instances are routed once healthy, old ones drain on SIGTERM), a SIGKILLed
    instance is replaced and routed, and a restarted daemon adopts what runs."""
    from zsconf.engine import Engine

    addr = "deployment/demo/w8a8-chat"
    eng = Engine(served.stack)
    st = eng.store
    daemons: list[DaemonProc] = []
    try:
        d = DaemonProc(served.stack, "--interval", "5s")
        daemons.append(d)
        d.wait_line("ready: first pass", seconds=120)
        first = eventually(lambda: serving(st, 1, addr), what="the W8A8 instance")
        text = (served.stack / "stack.yaml").read_text()
        with _Load(served, "w8a8-chat") as load:
            (served.stack / "stack.yaml").write_text(
                text.replace("w8a8-chat: {model: faq-bot-w8a8@latest,", "w8a8-chat: {model: faq-bot-w8a8@latest, instances: 2,")
            )  # fmt: skip
            two = eventually(lambda: serving(st, 2, addr), seconds=600, what="two W8A8 instances")
            assert set(first) <= set(two)  # the running one kept
            time.sleep(2)
        assert load.ok > 0 and load.failed == [], load.failed[:3]

        # SIGKILL of one vLLM instance: the daemon starts another and routes to it.
        victim = sorted(two)[0]
        wrapper = next(r.pid for r in st.runs(addr) if r.run_id == victim)
        os.kill(two[victim], signal.SIGKILL)
        healed = eventually(
            lambda: (s := serving(st, 2, addr)) and victim not in s and s, seconds=600, what="a replacement"
        )
        assert served.ask("w8a8-chat", "What is zsconf?")
        # vLLM's helper processes went with the killed instance (the wrapper ends its group).
        eventually(lambda: not _group_alive(wrapper), seconds=60, what="the killed instance's group gone")

        # A daemon killed with SIGKILL: the next one adopts every instance, starting none.
        d.kill()
        d2 = DaemonProc(served.stack, "--interval", "5s", name="d2")
        daemons.append(d2)
        d2.wait_line("ready: first pass", seconds=120)
        time.sleep(6)  # a drift check and a run poll: chances to (wrongly) restart something
        assert serving(st, 2, addr) == healed

        # Scale back to one under load: the instance left drains (SIGTERM), no call fails.
        with _Load(served, "w8a8-chat") as load:
            (served.stack / "stack.yaml").write_text(text)
            eventually(lambda: serving(st, 1, addr), seconds=300, what="one W8A8 instance")
            time.sleep(2)
        assert load.ok > 0 and load.failed == [], load.failed[:3]
    finally:
        for daemon in daemons:
            daemon.kill()
        eng.close()


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        try:
            if (
                entry.isdigit()
                and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid
            ):
                out.append(int(entry))
        except OSError:
            continue
    return out


def serving(store: Any, n: int, addr: str) -> dict[str, int] | None:
    """run id -> pid of the vLLM server once the gateway routes `addr` to exactly n instances, each
    a live vLLM process (the child of the executor's wrapper, which the runner exec'd into)."""
    row = store.resource(addr)
    routed = {i["run_id"] for i in (row.outputs.get("instances") or [])} if row is not None else set()
    runs = {r.run_id: r for r in store.runs(addr) if r.run_id in routed and r.status == "running"}
    out = {}
    for run_id, run in runs.items():
        kids = _children(run.pid) if run.pid else []
        if len(kids) == 1:
            out[run_id] = kids[0]
    return out if len(routed) == n and len(out) == n else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
