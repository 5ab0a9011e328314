"""Gateway overhead: a fast stub upstream measured directly and through `runners.gateway` with every
feature on (key auth from the state store, per-key and per-model rpm/tpm limits, deployment QPS
limit, trial allowance, blocklist moderation on input and output, usage metering to SQLite,
Prometheus metrics), at concurrency 1, 16 and 64, streaming and not.

Drives the shared harness /work/shared/bench/gateway/bench.py (`../shared/bench/gateway` from the
repo): it starts its stub, starts this gateway, interleaves direct and gateway runs, and prints added
latency p50/p99, req/s and gateway CPU per request. Extra arguments go to bench.py, e.g.
`python bench/gateway.py --repeats 1 --duration 3 --concurrency 1,16`; `--floor` first measures
bench/gateway_floor.py (a bare passthrough) instead, to read the figures against on a busy machine.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARNESS = (REPO / ".." / "shared" / "bench" / "gateway").resolve()
STUB_PORT = 18000
GW_PORT = 18080
UPSTREAM_KEY = "sk-stub-upstream"
HUGE = 10**9


def setup(root: Path) -> tuple[Path, str]:
    """State store with one key, config with every feature on; returns (spec path, secret)."""
    sys.path.insert(0, str(REPO))
    from zsconf.keys import create_key
    from zsconf.state import open_store

    url = f"sqlite:///{root / 'state.db'}"
    store = open_store(url)
    secret, _row = create_key(store, "bench", "g")
    store.close()
    config = {
        "version": 1,
        "upstream_api_key": UPSTREAM_KEY,
        "deployments": [
            {
                "tenant": "bench",
                "name": "gpt-4o-mini",
                "qps": 100000.0,
                "max_tokens_cap": 2048,
                "instances": [{"id": "stub-0", "url": f"http://127.0.0.1:{STUB_PORT}/v1"}],
            }
        ],
        "groups": [
            {
                "tenant": "bench",
                "name": "g",
                "services": ["gpt-4o-mini"],
                "per_key": {"rpm": HUGE, "tpm": HUGE},
                "per_model": {"gpt-4o-mini": {"rpm": HUGE, "tpm": HUGE}},
                "trial_tokens": HUGE,
                "moderation": {
                    "blocklist": ["forbidden-word", "another-banned-phrase"],
                    "check_output": True,
                },
            }
        ],
    }
    (root / "gateway.json").write_text(json.dumps(config))
    spec = {
        "host": "127.0.0.1",
        "port": GW_PORT,
        "state_url": url,
        "config_path": str(root / "gateway.json"),
        "workdir": str(root / "gw"),
    }
    (root / "spec.json").write_text(json.dumps(spec))
    return root / "spec.json", secret


def main(argv: list[str]) -> int:
    if not (HARNESS / "bench.py").exists():
        print(f"error: the harness is missing: {HARNESS}/bench.py", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="zsconf-gwbench-"))
    spec, secret = setup(root)
    py = shlex.quote(sys.executable)
    name = "zsconf gateway (all features)"
    cmd = f"cd {shlex.quote(str(REPO))} && exec {py} -m runners.gateway {shlex.quote(str(spec))}"
    if argv[:1] == ["--floor"]:  # the no-feature floor, measured the same way for comparison
        argv = argv[1:]
        name = "floor: bare Litestar + aiohttp passthrough"
        cmd = (
            f"exec {py} {shlex.quote(str(REPO / 'bench' / 'gateway_floor.py'))} --port {GW_PORT} "
            f"--upstream http://127.0.0.1:{STUB_PORT}/v1 --upstream-key {UPSTREAM_KEY}"
        )
    args = [
        sys.executable,
        str(HARNESS / "bench.py"),
        "--gateway-name",
        name,
        "--gateway-url",
        f"http://127.0.0.1:{GW_PORT}/v1",
        "--gateway-key",
        secret,
        "--gateway-cmd",
        cmd,
        "--stub-port",
        str(STUB_PORT),
        "--stub-key",
        UPSTREAM_KEY,
        "--out-dir",
        str(root / "results"),
        *argv,
    ]
    rc = subprocess.call(args)
    print(f"results and logs: {root / 'results'}; usage DB: {root / 'state.db'}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
