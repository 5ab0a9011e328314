"""ServeSpec validation and the mapping from the generic runner envelope (CONTRACTS.md §2)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.run_serve import ServeSpec, serve_spec_from_envelope

ENVELOPE = {
    "run_id": "r-1",
    "address": "deployment/acme/chat",
    "workdir": "/runs/r-1",
    "output_dir": None,
    "device": "npu",
    "spec": {
        "model": "bot@latest",
        "engine": "auto",
        "max_model_len": 4096,
        "engine_args": {"enforce_eager": True},
    },
    "inputs": {"model_dir": "/models/acme/bot/v2", "model_version": 2, "instance": 0},
    "resume": False,
}


def test_envelope_maps_to_serve_spec() -> None:
    env = {"ZSCONF_PORT": "8200", "ZSCONF_SERVE_API_KEY": "k", "ASCEND_RT_VISIBLE_DEVICES": "4,5"}
    spec = serve_spec_from_envelope(ENVELOPE, env)
    assert spec.model_dump() == {
        "run_id": "r-1",
        "address": "deployment/acme/chat",
        "model_dir": "/models/acme/bot/v2",
        "served_model_name": "chat",
        "host": "127.0.0.1",
        "port": 8200,
        "engine": "vllm",  # auto on an accelerator
        "device": "npu",
        "cards": 2,
        "max_model_len": 4096,
        "api_key": "k",
        "engine_args": {"enforce_eager": True},
        "workdir": "/runs/r-1",
        "python": None,  # no engine environment in this envelope: vLLM importable here
        "tool_parser": None,
        "lora_modules": {},
        "max_lora_rank": None,
        "kv_cache_memory_bytes": None,
        "images": None,
        "media_hosts": None,
    }


def test_envelope_on_cpu_is_embedded_with_defaults() -> None:
    spec = serve_spec_from_envelope({**ENVELOPE, "device": "cpu", "spec": {"model": "bot@1"}}, {})
    assert (spec.engine, spec.port, spec.cards, spec.api_key, spec.max_model_len) == (
        "embedded",
        0,
        0,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"port": 70000}, "port"),
        ({"engine": "tgi"}, "engine"),
        ({"extra": 1}, "extra"),
        ({"served_model_name": ""}, "served_model_name"),
    ],
)
def test_bad_spec_names_the_field(change: dict[str, object], field: str) -> None:
    base = {"run_id": "r", "address": "deployment/a/b", "model_dir": "/m", "served_model_name": "b"}
    with pytest.raises(ValidationError) as err:
        ServeSpec.model_validate({**base, **change})
    assert err.value.errors()[0]["loc"] == (field,)
