"""What `zsconf up` prints must work when pasted where it was run, with several service groups:
each printed call pairs a group's key with that group's own model, on the first run (keys shown)
and on the second (a key made with the printed command). Fake runners (tests/fake_runners): the
server answers `echo: <question>`. tests/test_quickstart.py walks the same path on the real
quickstart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import test_plan
from test_daemon_run import DEPLOY_STACK, cleanup
from test_plan import make_stack
from test_quickstart import Up, paste, snippet

engine_env = test_plan.engine_env  # fixture: fake runners on PYTHONPATH

TWO_GROUPS = (
    DEPLOY_STACK
    + "  other: {model: base, engine: embedded, instances: 1}\n"
    + "service_groups:\n  aaa: {services: [other], keys: 1}\n  bbb: {services: [chat], keys: 1}\n"
)


def _calls_work(pasted: Any, model: str) -> None:
    assert pasted.returncode == 0, pasted.stderr
    curl_out, py_out = pasted.stdout.split("\n", 1)
    reply = json.loads(curl_out)
    assert reply["model"] == model and reply["choices"][0]["message"]["content"] == "echo: What is zsconf?"
    assert py_out.strip() == "echo: What is zsconf?"


def test_up_with_two_groups_pairs_each_key_with_its_own_model(tmp_path: Path, engine_env: Path) -> None:
    stack = make_stack(tmp_path / "quickstart", TWO_GROUPS)
    try:
        _walk(tmp_path)
    finally:
        cleanup([], stack)


def _walk(tmp_path: Path) -> None:
    up = Up(tmp_path)
    try:
        text = up.wait_ready()
        keys = [x for x in text.splitlines() if x.startswith("API key:    zs-")]
        assert len(keys) == 2 and "service_group/acme/aaa" in keys[0] and "service_group/acme/bbb" in keys[1]
        call = snippet(text)
        assert keys[0].split()[2] in call and '"model": "other"' in call  # aaa's key, aaa's model
        _calls_work(paste(call, tmp_path), "other")
    finally:
        up.stop()
    assert up.proc.returncode == 0
    again = Up(tmp_path)
    try:
        text = again.wait_ready()
        assert "API key:    zs-" not in text
        export = next(x for x in text.splitlines() if x.startswith("export ZSCONF_KEY="))
        assert "service_group/acme/aaa -C quickstart" in export
        _calls_work(paste(export + "\n" + snippet(text), tmp_path), "other")
    finally:
        again.stop()
    assert again.proc.returncode == 0


def _unused(_: Any) -> None:
    _ = engine_env
