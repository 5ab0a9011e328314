"""Key helpers and `zsconf keys` on a real SQLite state store (subprocess CLI, as users run it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zsconf.errors import StateError
from zsconf.keys import (
    create_key,
    generate_key,
    hash_key,
    resolve_group,
    revoke_keys,
    rotate_key,
    set_banned,
)
from zsconf.state import open_store


def _zsconf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop("ZSCONF_STATE_URL", None)
    return subprocess.run(
        [str(Path(sys.executable).with_name("zsconf")), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_generate_key_shape() -> None:
    secret, key_id, prefix, digest = generate_key()
    assert secret.startswith("zs-") and len(secret) == 43
    assert key_id.startswith("ak-") and len(key_id) == 15
    assert prefix == secret[:10] and digest == hash_key(secret) and len(digest) == 64
    assert generate_key()[0] != secret


def test_key_management(tmp_path: Path) -> None:
    store = open_store(stack_dir=tmp_path)
    try:
        with pytest.raises(StateError, match="no service group"):
            resolve_group(store, "support")
        secrets = [create_key(store, "acme", "support")[0] for _ in range(5)]
        with pytest.raises(StateError, match="5 keys"):
            create_key(store, "acme", "support")
        assert resolve_group(store, "support") == ("acme", "support")
        create_key(store, "beta", "support")
        with pytest.raises(StateError, match="ambiguous"):
            resolve_group(store, "support")
        rows = store.api_keys(tenant="acme", group="support")
        assert {r.key_hash for r in rows} == {hash_key(s) for s in secrets}
        assert all(s not in json.dumps([r.model_dump(mode="json") for r in rows]) for s in secrets)
        assert revoke_keys(store, "acme", "support", rows[0].id) == [rows[0].id]
        with pytest.raises(StateError, match="no active key"):
            revoke_keys(store, "acme", "support", rows[0].id)
        new_secret, new_row, revoked = rotate_key(store, "acme", "support", rows[1].id)
        assert revoked == [rows[1].id] and store.api_key_by_hash(hash_key(new_secret)).id == new_row.id
        set_banned(store, "acme", "support", new_row.id)
        assert store.api_key_by_hash(hash_key(new_secret)).banned
        assert len(revoke_keys(store, "acme", "support")) == 4
    finally:
        store.close()


def test_keys_cli(tmp_path: Path) -> None:
    from zsconf.state import ResourceRow, open_store

    (tmp_path / "stack.yaml").write_text("tenants: {acme: {}}\n")
    store = open_store(None, tmp_path)
    store.put_resource(ResourceRow(address="service_group/acme/support", kind="service_group", tenant="acme",
                                   name="support", spec={"services": []}))  # fmt: skip
    store.close()
    r = _zsconf("keys", "create", "nope/support", cwd=tmp_path)
    assert r.returncode == 1 and "no service group nope/support" in r.stderr
    r = _zsconf("keys", "create", "acme/support", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["secret"].startswith("zs-")
    r = _zsconf("keys", "list", "support", cwd=tmp_path)
    assert r.returncode == 0 and created["id"] in r.stdout and "active" in r.stdout
    assert created["secret"] not in r.stdout and created["secret"][:10] in r.stdout
    r = _zsconf("keys", "rotate", "support", "--json", cwd=tmp_path)
    rotated = json.loads(r.stdout)
    assert rotated["revoked"] == [created["id"]] and rotated["secret"] != created["secret"]
    r = _zsconf("keys", "list", "support", "--stack", str(tmp_path), "--json", cwd=tmp_path.parent)
    assert {k["status"] for k in json.loads(r.stdout)} == {"revoked", "active"}
    r = _zsconf("keys", "ban", "support", rotated["id"], cwd=tmp_path)
    assert r.returncode == 0
    r = _zsconf("keys", "revoke", "support", cwd=tmp_path)
    assert r.returncode == 0 and "revoked 1 key" in r.stdout
    r = _zsconf("keys", "list", "nope", cwd=tmp_path)
    assert r.returncode == 1 and "no service group named 'nope'" in r.stderr and "Traceback" not in r.stderr
