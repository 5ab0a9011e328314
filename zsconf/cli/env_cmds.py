"""`zsconf env list|install|check`: the Python environments serving engines (vLLM) run in.

Registered by `zsconf.cli.main`. Drives `zsconf.envs`: each engine gets its own environment, built
with uv from pins shipped with zsconf into the per-user cache (`~/.cache/zsconf/envs`, or
$ZSCONF_ENVS_DIR) and reused by every stack. Names resolve through `zsconf.envs.ENVIRONMENTS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from zsconf.envs import EnvSpec, InstalledEnv

__all__ = ["register"]

NameArg = Annotated[
    str,
    typer.Argument(
        help="the environment: vllm-cpu, vllm-cuda or vllm-ascend (see `zsconf env list`)", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]

env_app = typer.Typer(
    help=(
        "Python environments that serving engines run in, one per engine (vLLM pins its own torch, "
        "transformers and compressed-tensors, which the training side cannot share).\n\n"
        "Each is built from pinned requirements shipped with zsconf into ~/.cache/zsconf/envs "
        "(or $ZSCONF_ENVS_DIR), once per user, and reused by every stack; new pins make a new one.\n\n"
        "Example: `zsconf env install vllm-cpu` (about 15-60 s with uv, 3 GB), then `zsconf env check vllm-cpu`."
    ),
    no_args_is_help=True,
)


def _versions(env: InstalledEnv) -> str:
    return ", ".join(f"{k} {v}" for k, v in env.versions.items() if v) or "-"


def _row(spec: EnvSpec) -> dict[str, object]:
    from zsconf.envs import env_dir, installed, unavailable_reason

    found = installed(spec)
    reason = None if found else unavailable_reason(spec)
    status = "installed" if found else f"cannot install here: {reason}" if reason else "not installed"
    return {
        "name": spec.name,
        "device": spec.device,
        "status": status,
        "path": str(found.path if found else env_dir(spec)),
        "versions": dict(found.versions) if found else {},
        "installed_at": found.installed_at.isoformat() if found else None,
        "install_seconds": found.install_seconds if found else None,
        "description": spec.description,
    }


def list_envs(as_json: JsonOpt = False) -> None:
    """Every engine environment: device, whether it is installed (or why it cannot be here), where,
    and the versions its smoke test imported."""
    from zsconf.cli.catalog_cmds import _table
    from zsconf.cli.output import print_json
    from zsconf.envs import ENVIRONMENTS

    rows = [_row(spec) for spec in ENVIRONMENTS.values()]
    if as_json:
        print_json(rows)
        return
    table = []
    for r in rows:
        versions = r["versions"]
        assert isinstance(versions, dict)
        shown = ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "-"
        table.append([str(r["name"]), str(r["device"]), str(r["status"]), str(r["path"]), shown])
    _table("Engine environments", ["env", "device", "status", "path", "versions"], table)


def install(
    name: NameArg,
    force: Annotated[
        bool,
        typer.Option("--force", help="remove and rebuild it even when installed (stop its servers first)"),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="hide the installer's own output")] = False,
) -> None:
    """Install an engine environment (nothing to do when it is installed), then import the engine in
    it as a smoke test. Example: `zsconf env install vllm-cpu`."""
    from datetime import UTC, datetime

    from zsconf.cli.output import console, err_console
    from zsconf.envs import get
    from zsconf.envs import install as install_env

    spec = get(name)
    asked = datetime.now(UTC)
    env = install_env(
        spec, progress=lambda line: err_console().print(line, markup=False), force=force, quiet=quiet
    )
    if env.installed_at < asked:  # built before this command: nothing was done
        console().print(f"{spec.name} is already installed at {env.path} ({_versions(env)})", markup=False)
        return
    console().print(
        f"{spec.name} installed in {env.install_seconds:.0f} s at {env.path} ({_versions(env)})", markup=False
    )


def check(name: NameArg) -> None:
    """Import the engine in an installed environment again (the smoke test); exit 1 when it is missing
    or broken. Example: `zsconf env check vllm-cpu`."""
    from zsconf.cli.output import console
    from zsconf.envs import check as check_env
    from zsconf.envs import get

    env = check_env(get(name))
    console().print(f"{env.spec.name} ok: {_versions(env)} ({env.python})", markup=False)


def register(app: typer.Typer) -> None:
    env_app.command("list")(list_envs)
    env_app.command("install")(install)
    env_app.command("check")(check)
    app.add_typer(env_app, name="env")
