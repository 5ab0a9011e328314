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

from zsconf.cli.stackdir import StackDir, at_flag, stack_dir

__all__ = ["HELP", "register", "up"]


def _snippets(gateway_url: str, model: str, key: str | None, task: str = "text-generation") -> str:
    """The calls to paste, with this stack's URL and one model of the key's group. Without a key
    shown in this run they read it from $ZSCONF_KEY (the shell expands it inside the curl's double
    quotes; the Python heredoc is quoted, so Python reads the environment). Greedy (temperature
    0): the model's sampling default is 1.0, as on vLLM. A text-to-image model gets an image call
    instead, its picture written to image.png."""
    bearer = key or "$ZSCONF_KEY"
    api_key = f'"{key}"' if key else 'os.environ["ZSCONF_KEY"]'
    imports = "from openai import OpenAI" if key else "import os\nfrom openai import OpenAI"
    if task == "text-to-image":
        return f"""\
curl -sS -o image.json -w '%{{http_code}} image.json\\n' {gateway_url}/images/generations \\
  -H "Authorization: Bearer {bearer}" -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "prompt": "a lighthouse at dawn", "seed": 1}}'

python - <<'EOF'
import base64
{imports}
client = OpenAI(base_url="{gateway_url}", api_key={api_key})
r = client.images.generate(model="{model}", prompt="a lighthouse at dawn", extra_body={{"seed": 1}})
open("image.png", "wb").write(base64.b64decode(r.data[0].b64_json))
print("wrote image.png")
EOF"""
    return f"""\
curl -w '\\n' {gateway_url}/chat/completions \\
  -H "Authorization: Bearer {bearer}" -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "temperature": 0, "messages": [{{"role": "user", "content": "What is zsconf?"}}]}}'

python - <<'EOF'
{imports}
client = OpenAI(base_url="{gateway_url}", api_key={api_key})
r = client.chat.completions.create(model="{model}", temperature=0,
                                   messages=[{{"role": "user", "content": "What is zsconf?"}}])
print(r.choices[0].message.content)
EOF"""


def _banner(info: dict[str, Any], new_keys: list[Any], eng: Any, directory: Path) -> str:
    """What `up` prints once the daemon is ready: where to call, with what. Every command in it
    works when pasted where `up` was run (`directory` is the stack as the user named it)."""
    at = at_flag(directory)
    rows = eng.store.resources()
    groups = {a: r for a, r in rows.items() if r.kind == "service_group"}
    # The snippet's key and model belong to the same group: a group with a new key if any.
    keyed = {k.address: k.secret for k in new_keys}
    group = next((a for a in sorted(groups) if a in keyed), next(iter(sorted(groups)), None))
    model = next(iter(groups[group].spec.get("services") or []), None) if group else None
    shown = f"deployment/{group.split('/')[1]}/{model}" if group and model else None
    logs = shown or next(
        (a for a in sorted(rows) if a.startswith(("deployment/", "finetune/"))), "platform/gateway"
    )
    lines = [f"zsconf is up: the daemon keeps {info['stack_dir']} applied (Ctrl-C stops it)."]
    url = info.get("gateway_url")
    if info.get("admin_url"):
        lines.append(
            f"Admin API:  {info['admin_url']}  (`zsconf status{at}`, `zsconf events{at} -f`, `zsconf logs{at} {logs}`)"
        )
        token = directory / ".zsconf" / "admin.token"
        lines.append(f"Console:    {info['admin_url']}/console/  (sign in with the token in {token})")
    if not url:
        lines.append("No gateway: the stack has no service group, so there is nothing to call yet.")
        return "\n".join(lines)
    lines.append(f"Gateway:    {url}")
    if group is None:
        return "\n".join(lines)
    for k in sorted(new_keys, key=lambda k: k.address):
        lines.append(f"API key:    {k.secret}  ({k.address}; not shown again after this run: store it)")
    if group not in keyed:
        lines.append(
            f"API keys of {group} were shown when they were created; make a new one with:\n"
            f"export ZSCONF_KEY=$(zsconf keys create {group}{at} --quiet)"
        )
    served = rows.get(shown) if shown else None
    task = (served.outputs or {}).get("task", "text-generation") if served is not None else "text-generation"
    lines += ["", _snippets(url, model or "MODEL", keyed.get(group), task)]
    return "\n".join(lines)


def _stop_servers(eng: Any) -> list[str]:
    """Stop the gateway and the model servers (drained: SIGTERM, in-flight calls finish)."""
    stopped = []
    for h in eng.executor.list_instances():
        eng.executor.stop_instance(h, grace_s=30.0)
        stopped.append(f"{h.deployment}#{h.index}")
    return stopped


def up(
    positional: Annotated[
        Path | None,
        typer.Argument(
            help="The stack directory (default: the stack containing the current one).", show_default=False
        ),
    ] = None,
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
    stack: StackDir = None,
) -> None:
    """Plan and apply the stack, wait for its jobs, then keep it applied (see HELP)."""
    from daemon.main import run_daemon
    from zsconf.cli.daemon_cmds import parse_seconds
    from zsconf.cli.output import console
    from zsconf.cli.plan_cmds import _print_plan, run_apply
    from zsconf.engine import Engine
    from zsconf.keys import forget_keys

    seconds = parse_seconds(interval, "--interval")  # a usage error first, as click's are
    directory = stack_dir(stack, positional)
    out = console()
    eng = Engine(directory)
    try:
        with eng.store.locked("up"):
            plan = eng.plan()
            _print_plan(plan)
            if not plan.can_apply():
                raise typer.Exit(1)
            # Applied even without a change: keys an interrupted apply created are shown.
            result = run_apply(eng, plan, parallelism=4, wait=True, locked=True, saved=False, forget=False)
            if not result.ok:
                out.print("Fix the errors above, then run `zsconf up` again.", markup=False)
                raise typer.Exit(1)

        def on_ready(info: dict[str, Any]) -> None:
            # soft_wrap: the snippets must paste as printed, whatever the terminal width
            out.print(_banner(info, result.new_keys, eng, directory), markup=False, highlight=False,
                      soft_wrap=True)  # fmt: skip
            sys.stdout.flush()
            forget_keys(eng.stack_dir, result.new_keys)  # shown twice now: in the summary and here

        code = run_daemon(directory, interval=seconds, prune=prune, admin_port=admin_port, on_ready=on_ready,
                          servers_stop_after=not keep_running)  # fmt: skip
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
