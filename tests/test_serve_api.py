"""The embedded model server as a real process on the tiny Qwen2, called with the openai SDK and httpx.

One server per module (started once); the SIGTERM test starts its own, since it stops it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import TEST_DEVICE, TEST_ENGINE_ARGS

from runners.serve.process import ServeProcess

pytestmark = pytest.mark.slow

KEY = "internal-test-key"
MAX_LEN = 512  # room for the tools preamble the chat template renders
MESSAGES = [{"role": "user", "content": "你好, tell me about training data"}]


def Server(tmp: Path, model_dir: Path, **spec: Any) -> ServeProcess:
    """A ready server on `model_dir` whose run directory is `tmp`."""
    body = {
        "run_id": "r-test",
        "address": "deployment/acme/chat",
        "model_dir": str(model_dir),
        "served_model_name": "tiny",
        "port": 0,
        "workdir": str(tmp),
        "device": TEST_DEVICE,
        "engine_args": TEST_ENGINE_ARGS,
        **spec,
    }
    return ServeProcess(body, tmp / "serve.json", tmp / "runner.log", env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def server(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    # The served copy's generation_config carries processors a request never asked for; the
    # server must not let transformers merge them in (the reference below ignores the file).
    model = tmp_path_factory.mktemp("model") / "tiny"
    shutil.copytree(tiny_qwen2, model)
    gen = json.loads((model / "generation_config.json").read_text())
    gen.update(repetition_penalty=3.0, no_repeat_ngram_size=2)
    (model / "generation_config.json").write_text(json.dumps(gen))
    srv = Server(tmp_path_factory.mktemp("serve"), model, api_key=KEY, max_model_len=MAX_LEN)
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(tiny_qwen2: Path) -> Any:
    """The same model loaded in the test, to check what the server says against transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()

    class Ref:
        tokenizer = tok

        @staticmethod
        def chat_ids(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
            text = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
            return tok(text, add_special_tokens=False)["input_ids"]

        @staticmethod
        def greedy(ids: list[int], max_new: int, presence: float = 0.0, frequency: float = 0.0) -> list[int]:
            """A plain greedy loop with OpenAI's penalties, written independently of the server."""
            out: list[int] = []
            eos = tok.eos_token_id
            with torch.inference_mode():
                for _ in range(max_new):
                    logits = model(torch.tensor([ids + out])).logits[0, -1].clone()
                    for t in set(out):
                        logits[t] -= out.count(t) * frequency + presence
                    nxt = int(logits.argmax())
                    out.append(nxt)
                    if nxt == eos:
                        break
            return out

    return Ref


def test_health_models_and_auth(server: ServeProcess) -> None:
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    bad = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    models = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY).models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_chat_greedy_matches_transformers_and_usage(client: openai.OpenAI, reference: Any) -> None:
    prompt = reference.chat_ids(MESSAGES)
    expected = reference.greedy(prompt, 12)
    resp = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == reference.tokenizer.decode(expected, skip_special_tokens=True)
    assert choice.finish_reason == ("stop" if expected[-1] == reference.tokenizer.eos_token_id else "length")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == len(prompt)
    assert resp.usage.completion_tokens == len(expected)
    assert resp.usage.total_tokens == len(prompt) + len(expected)


def test_penalties_follow_openai_definition(client: openai.OpenAI, reference: Any) -> None:
    prompt = reference.chat_ids(MESSAGES)
    for presence, frequency in [(1.5, 0.0), (0.0, 2.0), (-1.0, 0.5)]:
        expected = reference.greedy(prompt, 16, presence=presence, frequency=frequency)
        resp = client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=16,
            temperature=0,
            presence_penalty=presence,
            frequency_penalty=frequency,
        )
        assert resp.choices[0].message.content == reference.tokenizer.decode(
            expected, skip_special_tokens=True
        )
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=0)
    penalised = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=16, temperature=0, frequency_penalty=2.0
    )
    assert plain.choices[0].message.content != penalised.choices[0].message.content


def test_top_k_1_and_tiny_top_p_sample_the_greedy_token(client: openai.OpenAI) -> None:
    greedy = (
        client.completions.create(model="tiny", prompt="hello", max_tokens=12, temperature=0).choices[0].text
    )
    for extra in ({"top_k": 1}, {"top_p": 1e-9}):
        resp = (
            client.completions.create(
                model="tiny", prompt="hello", max_tokens=12, temperature=1.5, extra_body=extra
            )
            if "top_k" in extra
            else client.completions.create(
                model="tiny", prompt="hello", max_tokens=12, temperature=1.5, **extra
            )
        )
        assert resp.choices[0].text == greedy, extra
    sampled = {
        client.completions.create(model="tiny", prompt="hello", max_tokens=12, temperature=1.5, seed=s)
        .choices[0]
        .text
        for s in range(3)
    }
    assert sampled != {greedy}


def test_stream_with_usage_equals_non_stream(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert full.usage is not None
    got = (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens)
    assert got == (full.usage.prompt_tokens, full.usage.completion_tokens, full.usage.total_tokens)
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_sse_framing(server: ServeProcess) -> None:
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_completions_n_seed_and_usage(client: openai.OpenAI, reference: Any) -> None:
    a = client.completions.create(
        model="tiny", prompt="The model", max_tokens=10, n=2, seed=7, temperature=1.0
    )
    b = client.completions.create(
        model="tiny", prompt="The model", max_tokens=10, n=2, seed=7, temperature=1.0
    )
    c = client.completions.create(
        model="tiny", prompt="The model", max_tokens=10, n=2, seed=8, temperature=1.0
    )
    texts = [x.text for x in a.choices]
    assert [x.index for x in a.choices] == [0, 1]
    assert texts == [x.text for x in b.choices]  # same seed, same samples
    assert texts != [x.text for x in c.choices]
    assert texts[0] != texts[1]  # n draws, not one copied
    prompt_ids = reference.tokenizer("The model")["input_ids"]
    assert a.usage is not None and a.usage.prompt_tokens == len(prompt_ids)
    assert (
        a.usage.completion_tokens <= 20
        and a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    )


def test_stop_sequences_trim_output(client: openai.OpenAI) -> None:
    full = (
        client.completions.create(model="tiny", prompt="数据", max_tokens=30, temperature=0).choices[0].text
    )
    clean = [i for i in range(3, len(full) - 3) if "\ufffd" not in full[: i + 3]]
    assert clean, full
    cut = clean[len(clean) // 2]
    stop = full[cut : cut + 2]
    first = full.find(stop)
    for stops in (stop, ["never-there", stop]):
        for stream in (False, True):
            if stream:
                chunks = list(
                    client.completions.create(
                        model="tiny", prompt="数据", max_tokens=30, temperature=0, stop=stops, stream=True
                    )
                )
                text = "".join(c.choices[0].text for c in chunks if c.choices)
                reason = [
                    c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
                ]
            else:
                choice = client.completions.create(
                    model="tiny", prompt="数据", max_tokens=30, temperature=0, stop=stops
                ).choices[0]
                text, reason = choice.text, [choice.finish_reason]
            assert text == full[:first]
            assert reason == ["stop"]


def test_max_tokens_capped_by_max_model_len(client: openai.OpenAI, reference: Any) -> None:
    prompt = reference.chat_ids(MESSAGES)
    resp = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=100000, temperature=0, frequency_penalty=2.0
    )  # penalty: keeps a random model off EOS
    assert resp.usage is not None
    if resp.choices[0].finish_reason == "length":
        assert resp.usage.total_tokens == MAX_LEN
    assert resp.usage.total_tokens <= MAX_LEN
    too_long = [{"role": "user", "content": "data " * MAX_LEN}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=too_long, max_tokens=1)
    assert err.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    assert len(prompt) < MAX_LEN


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"presence_penalty": 5}, "presence_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ],
)
def test_bad_params_are_400_naming_the_field(
    client: openai.OpenAI, params: dict[str, Any], field: str
) -> None:
    kwargs: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, **params}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**kwargs)
    error = err.value.body
    assert isinstance(error, dict) and error["param"] == field and field in error["message"]


def test_bad_json_unknown_model_and_route(server: ServeProcess, client: openai.OpenAI) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    bad = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=MESSAGES)
    missing = httpx.get(server.url + "/v1/nothing", headers=headers)
    assert missing.status_code == 404 and "error" in missing.json()


def test_tools_are_accepted(client: openai.OpenAI, reference: Any) -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    messages = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    resp = client.chat.completions.create(model="tiny", messages=messages, tools=tools, max_tokens=3)
    assert resp.usage is not None and resp.usage.completion_tokens >= 1
    # The tools reached the chat template: the prompt is the template rendered with them.
    assert resp.usage.prompt_tokens == len(reference.chat_ids(messages, tools))
    assert resp.usage.prompt_tokens > len(reference.chat_ids(messages))


def test_concurrent_requests_are_not_interleaved(server: ServeProcess, client: openai.OpenAI) -> None:
    prompts = [f"{i} 训练 data number {i}" for i in range(8)]
    expected = [
        client.completions.create(model="tiny", prompt=p, max_tokens=24, temperature=0).choices[0].text
        for p in prompts
    ]

    async def run() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)

        async def one(i: int) -> str:
            if i % 2:  # half streamed, half not: both kinds at once
                stream = await aclient.completions.create(
                    model="tiny", prompt=prompts[i], max_tokens=24, temperature=0, stream=True
                )
                return "".join([c.choices[0].text async for c in stream if c.choices])
            resp = await aclient.completions.create(
                model="tiny", prompt=prompts[i], max_tokens=24, temperature=0
            )
            return resp.choices[0].text

        try:
            return await asyncio.gather(*(one(i) for i in range(8)))
        finally:
            await aclient.close()

    assert asyncio.run(run()) == expected


def test_client_disconnect_cancels_generation(server: ServeProcess, client: openai.OpenAI) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    before = httpx.get(server.url + "/health").json()
    body = {
        "model": "tiny",
        "prompt": "hello",
        "max_tokens": 10000,
        "temperature": 1.0,
        "stream": True,
        "frequency_penalty": 2.0,
    }
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=headers) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                break  # one token seen: hang up
    # The worker runs jobs in order: once this answers, the abandoned job has ended.
    client.completions.create(model="tiny", prompt="x", max_tokens=1)
    after = httpx.get(server.url + "/health").json()
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["generated_tokens"] - before["generated_tokens"] < MAX_LEN - 2


def test_lifecycle_503_while_loading_then_sigterm_finishes_in_flight(
    tiny_qwen2: Path, tmp_path: Path
) -> None:
    """Binds before loading (/health 503, then 200), prints ready; SIGTERM stops accepting, lets the
    in-flight stream finish, exits 0. One process for the whole life cycle (starting one is slow)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    spec = {
        "run_id": "r",
        "address": "deployment/acme/c",
        "model_dir": str(tiny_qwen2),
        "served_model_name": "tiny",
        "port": port,
        "api_key": KEY,
        "workdir": str(tmp_path),
        "device": TEST_DEVICE,
    }
    (tmp_path / "s.json").write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, "-m", "runners.serve", str(tmp_path / "s.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen: list[int] = []
    lines: list[str] = []
    first = threading.Event()
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {
        "model": "tiny",
        "prompt": "hello",
        "max_tokens": 400,
        "temperature": 1.0,
        "seed": 1,
        "frequency_penalty": 2.0,
        "stream": True,
    }

    def call() -> None:
        with httpx.stream("POST", url + "/v1/completions", json=body, headers=headers, timeout=120) as resp:
            for line in resp.iter_lines():
                if line:
                    lines.append(line)
                    first.set()

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 200 not in seen:
            try:
                seen.append(httpx.get(url + "/health", timeout=5).status_code)
                if seen[-1] == 503:
                    loading = httpx.get(url + "/v1/models", headers=headers)
                    assert loading.status_code in (503, 200)  # 200 if it finished loading meanwhile
            except httpx.TransportError:
                time.sleep(0.02)
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) | {"pid": 0} == {
            "event": "ready",
            "port": port,
            "host": "127.0.0.1",
            "model": "tiny",
            "device": TEST_DEVICE,
            "pid": 0,
        }
        caller = threading.Thread(target=call)
        caller.start()
        assert first.wait(60)
        proc.send_signal(signal.SIGTERM)
        at_signal = len(lines)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(url + "/health", timeout=2)
        caller.join(120)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen[0] == 503 and seen[-1] == 200 and set(seen) == {503, 200}
    assert len(lines) > at_signal + 1  # it went on generating after the signal
    assert lines[-1] == "data: [DONE]"
    finishes = [json.loads(x[6:])["choices"][0]["finish_reason"] for x in lines[:-1]]
    assert finishes[-1] in ("length", "stop")
    events = [json.loads(x)["event"] for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events == ["loading", "ready", "stopped"]


def test_non_streaming_disconnect_cancels_generation(server: ServeProcess, client: openai.OpenAI) -> None:
    before = httpx.get(server.url + "/health").json()
    body = {
        "model": "tiny",
        "prompt": "hello",
        "max_tokens": 10000,
        "temperature": 1.0,
        "frequency_penalty": 2.0,
    }
    with pytest.raises(httpx.ReadTimeout):  # the client gives up before the answer: it hangs up
        httpx.post(
            server.url + "/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=httpx.Timeout(5.0, read=0.05),
        )
    client.completions.create(model="tiny", prompt="x", max_tokens=1)
    after = httpx.get(server.url + "/health").json()
    assert after["cancelled"] == before["cancelled"] + 1
