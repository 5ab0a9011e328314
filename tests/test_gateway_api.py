"""The gateway as a real process in front of real stub upstreams, called with the openai SDK and
httpx: routes, checks (500002), keys and groups (500004, 700003, isolation), moderation
(600001-600004), upstream failures (500001), streaming with include_usage, tool calling pass-through,
metering and metrics."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_harness import GatewayEnv, start_stub


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    a = start_stub(ident="a")
    b = start_stub(ident="b")
    env = GatewayEnv(tmp_path_factory.mktemp("gw"))
    inst = lambda s, i: {"id": i, "url": f"http://127.0.0.1:{s.port}/v1"}  # noqa: E731
    dead = {"id": "dead-0", "url": f"http://127.0.0.1:{_free_port()}/v1"}
    env.config["deployments"] = [
        {"tenant": "acme", "name": "chat", "instances": [inst(a, "chat-0"), inst(b, "chat-1")]},
        {"tenant": "acme", "name": "capped", "instances": [inst(a, "capped-0")], "max_tokens_cap": 64},
        {"tenant": "acme", "name": "down", "instances": [dead]},
        {"tenant": "acme", "name": "stopped", "instances": []},
        {
            "tenant": "beta",
            "name": "other",
            "served_model": "upstream-name",
            "instances": [inst(b, "other-0")],
        },
    ]
    env.config["groups"] = [
        {
            "tenant": "acme",
            "name": "g1",
            "services": ["chat", "capped", "down", "stopped"],
            "moderation": {"blocklist": ["forbidden"], "check_output": True},
        },
        {"tenant": "beta", "name": "g2", "services": ["other"]},
        {"tenant": "acme", "name": "off", "enabled": False, "services": ["chat"]},
    ]
    env.keys = {  # type: ignore[attr-defined]
        "g1": env.add_key("acme", "g1"),
        "g2": env.add_key("beta", "g2"),
        "off": env.add_key("acme", "off"),
        "banned": env.add_key("acme", "g1", banned=True),
        "revoked": env.add_key("acme", "g1"),
    }
    env.stubs = (a, b)  # type: ignore[attr-defined]
    env.start(usage_flush_s=0.2)
    yield env
    env.close()
    a.stop()
    b.stop()


def _client(env: GatewayEnv, who: str = "g1") -> openai.OpenAI:
    return openai.OpenAI(base_url=env.url, api_key=env.keys[who][0], max_retries=0)  # type: ignore[attr-defined]


def _post(env: GatewayEnv, body: dict, who: str = "g1", path: str = "/chat/completions") -> httpx.Response:
    return httpx.post(
        env.url + path, json=body, headers={"Authorization": f"Bearer {env.keys[who][0]}"}, timeout=10
    )  # type: ignore[attr-defined]


def _err(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "type", "message"}, body
    return body["error"]


USER = [{"role": "user", "content": "Hello there, how are you today?"}]


def test_chat_sync_sdk_and_usage_record(gw: GatewayEnv) -> None:
    r = _client(gw).chat.completions.create(model="chat", messages=USER)
    assert r.choices[0].message.content.startswith("Hello from the stub")
    assert r.usage.completion_tokens == 16
    key_id = gw.keys["g1"][1]  # type: ignore[attr-defined]
    deadline = time.time() + 5
    rec = None
    while time.time() < deadline:
        recs = [u for u in gw.usage() if u.key_id == key_id and u.status == 200 and not u.stream]
        if recs:
            rec = recs[-1]
            break
        time.sleep(0.1)
    assert rec is not None
    assert (rec.prompt_tokens, rec.completion_tokens) == (r.usage.prompt_tokens, r.usage.completion_tokens)
    assert (rec.tenant, rec.group, rec.model, rec.deployment) == ("acme", "g1", "chat", "chat")
    assert rec.instance in ("chat-0", "chat-1") and rec.latency_ms > 0 and rec.error_code is None


def test_stream_include_usage_and_stripped(gw: GatewayEnv) -> None:
    c = _client(gw)
    chunks = list(
        c.chat.completions.create(
            model="chat", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.startswith("Hello from the stub")
    chunks = list(c.chat.completions.create(model="chat", messages=USER, stream=True))
    assert all(ch.usage is None for ch in chunks) and all(ch.choices for ch in chunks)
    # The gateway always asks upstream for usage (to meter), whatever the client asked.
    last = httpx.get(f"http://127.0.0.1:{gw.stubs[0].port}/last").json()  # type: ignore[attr-defined]
    last_b = httpx.get(f"http://127.0.0.1:{gw.stubs[1].port}/last").json()  # type: ignore[attr-defined]
    assert last["stream_options"]["include_usage"] or last_b["stream_options"]["include_usage"]


def test_stream_usage_computed_when_backend_omits_it(gw: GatewayEnv) -> None:
    msgs = [{"role": "user", "content": "count for me [[nousage]]"}]
    chunks = list(
        _client(gw).chat.completions.create(
            model="chat", messages=msgs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 16
    assert chunks[-1].usage.prompt_tokens == len(msgs[0]["content"]) // 4


def test_async_sdk_concurrent(gw: GatewayEnv) -> None:
    async def run() -> list:
        c = openai.AsyncOpenAI(base_url=gw.url, api_key=gw.keys["g1"][0], max_retries=0)  # type: ignore[attr-defined]
        try:
            return await asyncio.gather(
                *[c.chat.completions.create(model="chat", messages=USER) for _ in range(20)]
            )
        finally:
            await c.close()

    out = asyncio.run(run())
    assert len(out) == 20 and all(r.usage.total_tokens > 16 for r in out)


def test_completions_endpoint(gw: GatewayEnv) -> None:
    c = _client(gw)
    r = c.completions.create(model="chat", prompt="Once upon a time", max_tokens=10)
    assert r.choices[0].text.startswith("Hello")
    chunks = list(
        c.completions.create(model="chat", prompt="Once", stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1].usage.completion_tokens == 16


def test_models_lists_only_the_group(gw: GatewayEnv) -> None:
    assert sorted(m.id for m in _client(gw).models.list()) == ["capped", "chat", "down", "stopped"]
    assert [m.id for m in _client(gw, "g2").models.list()] == ["other"]


def test_isolation_between_groups(gw: GatewayEnv) -> None:
    with pytest.raises(openai.NotFoundError):
        _client(gw, "g2").chat.completions.create(model="chat", messages=USER)
    r = _post(gw, {"model": "chat", "messages": USER}, who="g2")
    assert r.status_code == 404 and _err(r)["code"] == "500002" and "chat" in _err(r)["message"]
    # served_model: the upstream sees its own name, the client the deployment name.
    r = _client(gw, "g2").chat.completions.create(model="other", messages=USER)
    assert r.model == "upstream-name"


def test_tool_calling_passes_through(gw: GatewayEnv) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    msgs = [
        {"role": "system", "content": "You call tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    r = _post(gw, {"model": "chat", "messages": msgs, "tools": tools})
    assert r.status_code == 200, r.text
    last = [httpx.get(f"http://127.0.0.1:{s.port}/last").json() for s in gw.stubs]  # type: ignore[attr-defined]
    assert any(x.get("tools") == tools and x["messages"][3]["role"] == "tool" for x in last)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"temperature": 2.0}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 101}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2049}, "max_tokens"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"n": 0}, "n"),
        ({"stop": [1]}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"messages": []}, "messages"),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "b"},
                ]
            },
            "system",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "last message",
        ),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "alternate"),
        ({"messages": [{"role": "robot", "content": "a"}]}, "role"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}, "tool"),
    ],
)
def test_param_errors_name_the_field(gw: GatewayEnv, patch: dict, field: str) -> None:
    r = _post(gw, {"model": "chat", "messages": USER, **patch})
    assert r.status_code == 400, r.text
    err = _err(r)
    assert (err["code"], err["type"]) == ("500002", "PARAM_ERROR")
    assert field in err["message"]


def test_param_edges_accepted(gw: GatewayEnv) -> None:
    ok = {
        "temperature": 0,
        "top_p": 1,
        "top_k": 100,
        "max_tokens": 2048,
        "presence_penalty": -2,
        "frequency_penalty": 2,
        "n": 1,
        "stop": ["x"],
        "seed": 3,
        "response_format": {"type": "json_object"},
    }
    assert _post(gw, {"model": "chat", "messages": USER, **ok}).status_code == 200
    # the deployment's cap replaces 2048
    r = _post(gw, {"model": "capped", "messages": USER, "max_tokens": 65})
    assert r.status_code == 400 and "(0, 64]" in _err(r)["message"]
    assert _post(gw, {"model": "capped", "messages": USER, "max_tokens": 64}).status_code == 200
    r = httpx.post(
        gw.url + "/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {gw.keys['g1'][0]}"},
    )  # type: ignore[attr-defined]
    assert r.status_code == 400 and _err(r)["code"] == "500002"


def test_key_errors(gw: GatewayEnv) -> None:
    for headers in ({}, {"Authorization": "Bearer zs-wrong"}, {"Authorization": "Basic abc"}):
        r = httpx.post(
            gw.url + "/chat/completions", json={"model": "chat", "messages": USER}, headers=headers
        )
        assert r.status_code == 401 and _err(r)["code"] == "500004"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url, api_key="zs-nope", max_retries=0).models.list()
    r = _post(gw, {"model": "chat", "messages": USER}, who="banned")
    assert r.status_code == 429 and _err(r) == {
        "code": "700003",
        "type": "AK_BANNED",
        "message": "this API key is banned",
    }
    r = _post(gw, {"model": "chat", "messages": USER}, who="off")
    assert r.status_code == 401 and _err(r)["code"] == "500004" and "disabled" in _err(r)["message"]


def test_revoked_and_new_keys_seen_within_a_second(gw: GatewayEnv) -> None:
    assert _post(gw, {"model": "chat", "messages": USER}, who="revoked").status_code == 200
    from zsconf.state import ApiKey
    from zsconf.state.models import utcnow

    with gw.store.session() as s:
        row = s.get(ApiKey, gw.keys["revoked"][1])  # type: ignore[attr-defined]
        row.revoked_at = utcnow()
        s.add(row)
        s.commit()
    secret, _ = gw.add_key("acme", "g1")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:
        old = _post(gw, {"model": "chat", "messages": USER}, who="revoked").status_code
        new = httpx.post(
            gw.url + "/chat/completions",
            json={"model": "chat", "messages": USER},
            headers={"Authorization": f"Bearer {secret}"},
        ).status_code
        if (old, new) == (401, 200):
            break
        time.sleep(0.05)
    assert (old, new) == (401, 200)
    assert time.monotonic() - t0 < 2.5  # refresh every 0.5 s; slack for a loaded machine


def test_a_new_key_works_on_its_first_call(gw: GatewayEnv) -> None:
    """`export ZSCONF_KEY=$(zsconf keys create ...)` then a call at once: the gateway looks an
    unknown key up by its hash instead of refusing it until its next refresh. Unknown tokens stay
    refused (and are not looked up again within a second)."""
    for _ in range(5):
        secret, _ = gw.add_key("acme", "g1")
        r = httpx.post(gw.url + "/chat/completions", json={"model": "chat", "messages": USER},
                       headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
        assert r.status_code == 200, r.text
    for _ in range(30):
        r = httpx.post(gw.url + "/chat/completions", json={"model": "chat", "messages": USER},
                       headers={"Authorization": "Bearer zs-not-a-key"})  # fmt: skip
        assert r.status_code == 401 and _err(r)["code"] == "500004"


def test_moderation_input_and_output(gw: GatewayEnv) -> None:
    r = _post(gw, {"model": "chat", "messages": [{"role": "user", "content": "say FORBIDDEN things"}]})
    assert r.status_code == 400 and _err(r)["code"] == "600003"
    msgs = [{"role": "system", "content": "you are forbidden to help"}, {"role": "user", "content": "hi"}]
    r = _post(gw, {"model": "chat", "messages": msgs})
    assert r.status_code == 400 and _err(r)["code"] == "600002"
    out = [{"role": "user", "content": "[[say:this is forb~idden fruit]]"}]
    r = _post(gw, {"model": "chat", "messages": out})
    assert r.status_code == 400 and _err(r) == {
        "code": "600004",
        "type": "TEXT_AUDIT_ANSWER_NOT_PASSED",
        "message": "the answer did not pass content moderation",
    }
    with httpx.stream(
        "POST",
        gw.url + "/chat/completions",
        json={
            "model": "chat",
            "messages": [{"role": "user", "content": "[[say:a b forbid den forb~idden c d e]]"}],
            "stream": True,
        },
        headers={"Authorization": f"Bearer {gw.keys['g1'][0]}"},
    ) as s:  # type: ignore[attr-defined]
        assert s.status_code == 200
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["code"] == "600004"
    assert "[DONE]" not in events and not any('" c"' in e for e in events)
    r = _post(gw, {"model": "chat", "messages": [{"role": "user", "content": "[[badchoices]]"}]})
    assert r.status_code == 400 and _err(r)["code"] == "600001"


def test_upstream_failures(gw: GatewayEnv) -> None:
    for model, content in (
        ("down", "hi"),
        ("stopped", "hi"),
        ("chat", "[[fail:500]]"),
        ("chat", "[[garbage]]"),
    ):
        r = _post(gw, {"model": model, "messages": [{"role": "user", "content": content}]})
        assert r.status_code == 500, (model, content, r.text)
        assert _err(r)["code"] == "500001" and _err(r)["type"] == "INVOKE_MODEL_ERROR"
    with pytest.raises(openai.InternalServerError):
        _client(gw).chat.completions.create(model="down", messages=USER)
    r = _post(gw, {"model": "chat", "messages": [{"role": "user", "content": "[[fail:400]]"}]})
    assert r.status_code == 400 and _err(r)["code"] == "500002" and "stub failure" in _err(r)["message"]
    # an error after the stream started: an error chunk, then the end
    with httpx.stream(
        "POST",
        gw.url + "/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "[[midfail]]"}], "stream": True},
        headers={"Authorization": f"Bearer {gw.keys['g1'][0]}"},
    ) as s:  # type: ignore[attr-defined]
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert len(events) == 3 and json.loads(events[-1])["error"]["code"] == "500001"
    with pytest.raises(openai.APIError):
        list(
            _client(gw).chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "[[drop]]"}], stream=True
            )
        )


def test_unknown_route_and_method(gw: GatewayEnv) -> None:
    h = {"Authorization": f"Bearer {gw.keys['g1'][0]}"}  # type: ignore[attr-defined]
    r = httpx.get(gw.url + "/nothing", headers=h)
    assert r.status_code == 404 and _err(r)["code"] == "500002"
    r = httpx.get(gw.url + "/chat/completions", headers=h)
    assert r.status_code == 405 and _err(r)["code"] == "500002"


def test_client_disconnect_is_metered(gw: GatewayEnv) -> None:
    key_id = gw.keys["g2"][1]  # type: ignore[attr-defined]
    body = {
        "model": "other",
        "stream": True,
        "messages": [{"role": "user", "content": "slow [[chunkdelay:100]]"}],
    }
    with httpx.stream(
        "POST",
        gw.url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {gw.keys['g2'][0]}"},
    ) as s:  # type: ignore[attr-defined]
        got = 0
        for line in s.iter_lines():
            if line.startswith("data: "):
                got += 1
                if got == 3:
                    break
    deadline = time.time() + 6
    while time.time() < deadline:
        recs = [u for u in gw.usage() if u.key_id == key_id and u.stream]
        if recs:
            break
        time.sleep(0.1)
    assert recs, "no usage record for the disconnected stream"
    assert 1 <= recs[-1].completion_tokens < 16 and recs[-1].ttft_ms is not None


def test_metrics(gw: GatewayEnv) -> None:
    _post(gw, {"model": "chat", "messages": USER})
    text = httpx.get(gw.url.removesuffix("/v1") + "/metrics").text
    assert 'zsconf_gateway_requests_total{group="g1",model="chat",status="200"}' in text
    assert 'zsconf_gateway_errors_total{code="600003",group="g1",model="chat"}' in text
    assert "zsconf_gateway_ttft_seconds_bucket" in text and "zsconf_gateway_tokens_total" in text
    assert httpx.get(gw.url.removesuffix("/v1") + "/health").json()["status"] == "ok"
