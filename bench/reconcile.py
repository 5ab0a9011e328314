"""How fast the daemon makes a saved YAML edit live, and what it costs while idle.

    python bench/reconcile.py [--edits 5] [--server fake|embedded] [--idle 20] [--no-limits]

Builds a small stack in a temporary directory (one deployment, one service group behind the
gateway), applies it once in-process (to get the group's API key, shown once), starts
`zsconf daemon` as a real process, then measures, for several edits each:

- scale: `instances: 1 -> 2` saved; live = the new instance recorded as serving and answering
  GET /health (scaled back to 1 between edits, untimed);
- limit: the group's `rate_limits.per_key.rpm: 100000 -> 1` saved while a client calls the gateway
  every 20 ms; live = the first 429 (and back: the first 200 after reverting);

and prints p50 / p90 of each, then the daemon's idle CPU (utime+stime from /proc/PID/stat over
`--idle` seconds, the daemon process only: model servers and the gateway are children in their own
sessions and not counted). Goal (issue 6): p50 < 2 s from save to live, idle CPU < 1 %.

`--server fake` (default) serves with tests/fake_runners/serve.py, so the figure is the daemon's
own latency; `--server embedded` uses the real embedded engine on debug/tiny-qwen2, whose load time
is then part of the figure. Not a test: it prints, it never asserts.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

STACK = """\
platform: {device: cpu, default_tenant: acme}
tenants:
  acme: {}
models:
  base: {base: debug/tiny-qwen2, path: base-model, validate_weights: false}
deployments:
  chat: {model: base, engine: embedded, instances: 1}
service_groups:
  app: {services: [chat], keys: 1, rate_limits: {per_key: {rpm: 100000}}}
"""


def _save(path: Path, text: str) -> float:
    """Write like an editor (temp file, then rename over) and return the moment of the save."""
    tmp = path.with_name(f".{path.name}.swp-bench")
    tmp.write_text(text)
    os.replace(tmp, path)
    return time.perf_counter()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _row(name: str, xs: list[float]) -> str:
    if not xs:
        return f"{name:<34} (no samples)"
    return (
        f"{name:<34} p50 {statistics.median(xs):6.2f} s   p90 {_pct(xs, 0.9):6.2f} s   "
        f"min {min(xs):5.2f}   max {max(xs):5.2f}   n={len(xs)}"
    )


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _instances(store: Any) -> list[dict[str, Any]]:
    row = store.resource("deployment/acme/chat")
    return list(row.outputs.get("instances") or []) if row is not None else []


def _healthy(url: str | None) -> bool:
    import httpx

    if not url:
        return False
    try:
        return httpx.get(url + "/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(check: Any, timeout: float, what: str, poll: float = 0.02) -> Any:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise SystemExit(f"timed out after {timeout} s waiting for {what}")


def _scale_edits(stack: Path, text: str, store: Any, n: int, timeout: float) -> list[float]:
    yaml = stack / "stack.yaml"
    out: list[float] = []
    for _ in range(n):
        before = {i["run_id"] for i in _instances(store)}
        t0 = _save(yaml, text.replace("instances: 1", "instances: 2"))

        def new_live(before: set[str] = before) -> bool:
            return any(i["run_id"] not in before and _healthy(i.get("endpoint")) for i in _instances(store))

        _wait(new_live, timeout, "the new instance")
        out.append(time.perf_counter() - t0)
        _save(yaml, text)
        _wait(lambda: len(_instances(store)) == 1, timeout, "scaling back to 1")
        time.sleep(0.5)
    return out


def _limit_edits(
    stack: Path, text: str, url: str, secret: str, n: int, timeout: float
) -> tuple[list[float], list[float]]:
    import httpx

    yaml = stack / "stack.yaml"
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    on, off = [], []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=10) as client:

        def status() -> int:
            return client.post("/chat/completions", json=body).status_code

        _wait(lambda: status() == 200, timeout, "the gateway to answer 200")
        for _ in range(n):
            t0 = _save(yaml, text.replace("rpm: 100000", "rpm: 1"))
            _wait(lambda: status() == 429, timeout, "the limit to be enforced")
            on.append(time.perf_counter() - t0)
            t0 = _save(yaml, text)
            _wait(lambda: status() == 200, timeout, "the limit to be lifted")
            off.append(time.perf_counter() - t0)
            time.sleep(0.5)
    return on, off


def _stop_everything(store: Any, executor: Any) -> None:
    from zsconf.engine import launcher

    refs = [(r.pid, r.start_time) for r in store.runs() if r.pid and r.start_time is not None]
    refs += [(h.pid, h.start_time) for h in executor.list_instances()]
    for pid, start in refs:
        if launcher.is_alive(launcher.ProcessRef(pid, start)):
            os.killpg(pid, signal.SIGKILL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=5)
    ap.add_argument("--server", choices=("fake", "embedded"), default="fake")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measurement")
    ap.add_argument("--no-limits", action="store_true", help="skip the rate-limit edits (no gateway)")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("ZSCONF_GATEWAY_PORT", "0")
    if args.server == "fake":
        os.environ["ZSCONF_RUNNER_MODULE_DEPLOYMENT"] = "fake_runners.serve"
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]
        )
    text = STACK if not args.no_limits else STACK.split("service_groups:")[0]
    if args.server == "embedded":
        text = text.replace(", path: base-model, validate_weights: false", "")

    from zsconf.engine import Engine

    with tempfile.TemporaryDirectory(prefix="zsconf-bench-reconcile-") as tmp:
        stack = Path(tmp) / "stack"
        (stack / "base-model").mkdir(parents=True)
        (stack / "base-model" / "config.json").write_text('{"model_type": "qwen2"}')
        (stack / "stack.yaml").write_text(text)
        eng = Engine(stack)
        daemon: subprocess.Popen[bytes] | None = None
        log = Path(tmp) / "daemon.log"
        try:
            t = time.perf_counter()
            result = eng.apply(eng.plan(), wait=True)
            if not result.ok:
                raise SystemExit(f"initial apply failed: {result.diagnostics}")
            print(f"initial apply: {time.perf_counter() - t:.1f} s ({args.server} server)")
            secret = next((k.secret for k in result.new_keys), "")
            with open(log, "wb") as err:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "zsconf.cli.main", "daemon", str(stack), "--interval", "30s"],
                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            _wait(lambda: "ready: first pass" in log.read_text(), 60, "the daemon to be ready")
            scale = _scale_edits(stack, text, eng.store, args.edits, args.timeout)
            on: list[float] = []
            off: list[float] = []
            if not args.no_limits:
                url = eng.gateway_url()
                if url is None:
                    print("no gateway running: rate-limit edits skipped")
                else:
                    on, off = _limit_edits(stack, text, url, secret, args.edits, args.timeout)
            time.sleep(3.0)  # let the last pass and its statuses settle
            hz = os.sysconf("SC_CLK_TCK")
            c0, w0 = _cpu_ticks(daemon.pid), time.perf_counter()
            time.sleep(args.idle)
            c1, w1 = _cpu_ticks(daemon.pid), time.perf_counter()
            idle = (c1 - c0) / hz / (w1 - w0) * 100
            print()
            print(
                f"save -> live, {args.edits} edits each (daemon --interval 30s; load {os.getloadavg()[0]:.1f})"
            )
            print(_row("scale 1->2: new instance /health", scale))
            if on:
                print(_row("limit rpm -> 1: first 429", on))
                print(_row("limit lifted: first 200", off))
            print(f"{'daemon idle CPU':<34} {idle:.2f} % over {w1 - w0:.0f} s ({c1 - c0} ticks at {hz} Hz)")
            return 0
        finally:
            if daemon is not None and daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
            _stop_everything(eng.store, eng.executor)
            eng.close()
            if os.environ.get("BENCH_SHOW_LOG"):
                print(log.read_text())


if __name__ == "__main__":
    sys.exit(main())
