"""Usage summaries (`zsconf.usage`, `zsconf usage`) over a real SQLite state store."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from zsconf.state import UsageRecord, open_store
from zsconf.usage import percentile, query_usage, summarize


def _rec(**kw) -> UsageRecord:
    base = {
        "ts": time.time(),
        "tenant": "acme",
        "group": "g1",
        "key_id": "ak-1",
        "model": "chat",
        "deployment": "chat",
        "instance": "chat-0",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "latency_ms": 10.0,
        "ttft_ms": None,
        "status": 200,
        "error_code": None,
        "stream": False,
    }
    return UsageRecord(**{**base, **kw})


def _fill(stack: Path) -> None:
    store = open_store(stack_dir=stack)
    recs = [_rec(latency_ms=float(i)) for i in range(1, 101)]
    recs += [
        _rec(status=429, error_code="700001", prompt_tokens=0, completion_tokens=0, latency_ms=0.1)
        for _ in range(3)
    ]
    recs += [
        _rec(status=400, error_code="600003", model="other", group="g2", prompt_tokens=0, completion_tokens=0)
    ]
    recs += [_rec(ts=time.time() - 3 * 86400)]  # outside 24h
    store.add_usage(recs)
    store.close()


def test_percentile_nearest_rank() -> None:
    vals = [float(i) for i in range(1, 101)]
    assert (percentile(vals, 50), percentile(vals, 90), percentile(vals, 99)) == (50.0, 90.0, 99.0)
    assert percentile([], 50) is None and percentile([7.0], 99) == 7.0


def test_summary(tmp_path: Path) -> None:
    _fill(tmp_path)
    store = open_store(stack_dir=tmp_path)
    try:
        s = summarize(query_usage(store, 86400))
        assert len(query_usage(store)) == 105
    finally:
        store.close()
    t = s["total"]
    assert (t["calls"], t["failed"]) == (104, 4)
    assert t["failures"][0] == {
        "code": "700001",
        "type": "AK_RPM_RATELIMITING",
        "message": "requests per minute over the key's limit",
        "count": 3,
        "share": 3 / 104,
    }
    assert t["latency_ms"] == {"p50": 50.0, "p90": 90.0, "p99": 99.0}  # successful calls only
    assert t["prompt_tokens"] == 1000 and t["completion_tokens"] == 500
    assert s["models"]["other"]["failures"][0]["code"] == "600003"
    assert set(s["groups"]) == {"acme/g1", "acme/g2"}


def test_usage_cli(tmp_path: Path) -> None:
    _fill(tmp_path)
    zs = str(Path(sys.executable).with_name("zsconf"))
    env = {k: v for k, v in os.environ.items() if k != "ZSCONF_STATE_URL"}
    out = tmp_path / "u.csv"
    r = subprocess.run(
        [zs, "usage", "--stack", str(tmp_path), "--group", "g1", "--csv", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "103 calls, 3 failed" in r.stdout and "700001 AK_RPM_RATELIMITING: 3 (2.9%)" in r.stdout
    assert "p50 50.0 p90 90.0 p99 99.0" in r.stdout
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 103 and rows[0]["model"] == "chat"
    r = subprocess.run(
        [zs, "usage", "-C", str(tmp_path), "--since", "7d", "--model", "chat", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert json.loads(r.stdout)["total"]["calls"] == 104
