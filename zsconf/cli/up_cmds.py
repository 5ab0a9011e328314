"""`zsconf up`: plan, apply and wait, then keep it so with the daemon in the foreground.

Registered by `zsconf.cli.main` (COMMAND_MODULES). The first command a newcomer runs: it prints the
gateway's base URL, the service group's new API key (once) and calls to paste. The top level stays
light; the engine and the daemon are imported when the command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["HELP", "register", "up"]


def _snippets(gateway_url: str, model: str, key: str) -> str:
    """The calls to paste, with this stack's URL and model (the key as given: real or a $VAR).
    Greedy (temperature 0): the model's sampling default is 1.0, as on vLLM."""
    return f"""\
curl {gateway_url}/chat/completions \\
  -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "temperature": 0, "messages": [{{"role": "user", "content": "What is zsconf?"}}]}}'

python - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="{gateway_url}", api_key="{key}")
r = client.chat.completions.create(model="{model}", temperature=0,
                                   messages=[{{"role": "user", "content": "What is zsconf?"}}])
print(r.choices[0].message.content)
EOF"""


def _banner(info: dict[str, Any], secrets: dict[str, list[str]], eng: Any) -> str:
    """What `up` prints once the daemon is ready: where to call, with what."""
    lines = [f"zsconf is up: the daemon keeps {info['stack_dir']} applied (Ctrl-C stops it)."]
    url = info.get("gateway_url")
    if info.get("admin_url"):
        lines.append(f"Admin API:  {info['admin_url']}  (`zsconf status`, `zsconf events -f`, `zsconf logs`)")
    if not url:
        lines.append("No gateway: the stack has no service group, so there is nothing to call yet.")
        return "\n".join(lines)
    lines.append(f"Gateway:    {url}")
    groups = {a: r for a, r in eng.store.resources().items() if r.kind == "service_group"}
    model = next((s for r in groups.values() for s in (r.spec.get("services") or [])), "MODEL")
    key = "$ZSCONF_KEY"
    for addr, keys in secrets.items():
        lines.append(f"API key:    {keys[0]}  ({addr}; not shown again after this run: store it)")
        key = keys[0]
    if not secrets and groups:
        lines.append(
            "API keys were created by an earlier apply and are not shown again; make a new one with "
            f"`zsconf keys create {next(iter(groups)).rsplit('/', 1)[1]} -C {info['stack_dir']}` and "
            "export it as ZSCONF_KEY."
        )
    lines += ["", _snippets(url, model, key)]
    return "\n".join(lines)


def _stop_servers(eng: Any) -> list[str]:
    """Stop the gateway and the model servers (drained: SIGTERM, in-flight calls finish)."""
    stopped = []
    for h in eng.executor.list_instances():
        eng.executor.stop_instance(h, grace_s=30.0)
        stopped.append(f"{h.deployment}#{h.index}")
    return stopped


def up(
    stack_dir: Annotated[Path, typer.Argument(help="The stack directory (holds stack.yaml).")] = Path("."),
    interval: Annotated[
        str, typer.Option("--interval", help="Drift check interval of the daemon (file edits act at once).")
    ] = "30s",
    prune: Annotated[bool, typer.Option("--prune", help="Delete resources removed from the files.")] = False,
    admin_port: Annotated[
        int | None, typer.Option("--admin-port", help="Admin API port on 127.0.0.1 (default: a free one).")
    ] = None,
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running",
            help="On Ctrl-C stop only the daemon and leave the gateway and model servers serving "
            "(the default stops them too, like `docker compose up`).",
        ),
    ] = False,
) -> None:
    """Plan and apply the stack, wait for its jobs, then keep it applied (see HELP)."""
    from daemon.main import run_daemon
    from zsconf.cli.daemon_cmds import parse_seconds
    from zsconf.cli.output import console
    from zsconf.cli.plan_cmds import _print_plan, run_apply
    from zsconf.engine import Engine

    seconds = parse_seconds(interval, "--interval")
    out = console()
    eng = Engine(stack_dir)
    try:
        with eng.store.locked("up"):
            plan = eng.plan()
            _print_plan(plan)
            if not plan.can_apply():
                raise typer.Exit(1)
            secrets: dict[str, list[str]] = {}
            if plan.actionable():
                result = run_apply(eng, plan, parallelism=4, wait=True, locked=True, saved=False)
                if not result.ok:
                    out.print("Fix the errors above, then run `zsconf up` again.", markup=False)
                    raise typer.Exit(1)
                secrets = result.secrets

        def on_ready(info: dict[str, Any]) -> None:
            # soft_wrap: the snippets must paste as printed, whatever the terminal width
            out.print(_banner(info, secrets, eng), markup=False, highlight=False, soft_wrap=True)
            sys.stdout.flush()

        code = run_daemon(stack_dir, interval=seconds, prune=prune, admin_port=admin_port, on_ready=on_ready)
        if not keep_running:
            stopped = _stop_servers(eng)
            if stopped:
                out.print(f"Stopped {', '.join(stopped)}; `zsconf up` starts them again.", markup=False)
        raise typer.Exit(code)
    finally:
        eng.close()


HELP = "\n\n".join(
    (
        "Plan and apply the stack, wait for its jobs, then keep it applied with the daemon in the "
        "foreground.",
        "Once everything runs it prints the gateway's OpenAI base URL, the service group's new API key "
        "(shown once: store it) and a curl and a Python call to paste. While it runs, saving a file "
        "of the stack applies the change (see `zsconf daemon --help`).",
        "Ctrl-C stops the daemon, then the gateway and the model servers (in-flight calls finish). "
        "Jobs still running are left running. State stays in <stack>/.zsconf, so the next `zsconf "
        "up` starts only what is missing.",
        "Example: `zsconf up examples/stacks/quickstart`",
    )
)


def register(app: typer.Typer) -> None:
    app.command("up", help=HELP)(up)
