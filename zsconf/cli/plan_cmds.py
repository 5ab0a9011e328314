"""`zsconf plan | apply | destroy | show | state list|show|rm | force-unlock`.

Registered by `zsconf.cli.main`. Only calls the engine, the state store and the renderer; heavy
imports (SQLAlchemy, the engine) happen inside the commands so `zsconf --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from zsconf.cli.daemon_cmds import lock_seconds
from zsconf.cli.stackdir import StackDir, stack_dir

if TYPE_CHECKING:
    from zsconf.engine import Engine
    from zsconf.plans import Plan

__all__ = ["register"]

_ARGS_HELP = (
    "the stack directory (default: the stack containing the current directory), then Hydra overrides "
    "such as deployments.chat.instances=4"
)
_ARGS_METAVAR = "DIR OVERRIDE"


def _split(args: list[str] | None, option: Path | None) -> tuple[Path, list[str]]:
    """(stack directory, Hydra overrides) from `[DIR] [OVERRIDES...]` and `-C DIR`."""
    args = list(args or [])
    positional = None
    if args and "=" not in args[0] and not args[0].startswith(("~", "+")):
        positional, args = Path(args[0]), args[1:]
    return stack_dir(option, positional), args


def _engine(directory: Path, read_only: bool = False) -> Engine:
    from zsconf.engine import Engine

    return Engine(directory, read_only=read_only)


def _read_plan(path: Path) -> Plan:
    """A plan saved by `zsconf plan -o FILE`, or a PlanError saying why FILE is not one."""
    from zsconf.errors import PlanError
    from zsconf.plans import Plan

    data = path.read_bytes()  # an OSError is one line from cli.main.run
    try:
        return Plan.from_dict(json.loads(data))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # not JSON, not UTF-8, not a plan
        why = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:120]
        raise PlanError(f"{path} is not a plan saved by `zsconf plan -o FILE` ({why})") from None


def _check_writable(out: Path) -> None:
    """Refuse -o FILE before planning when FILE cannot be written."""
    from zsconf.errors import PlanError

    if out.is_dir():
        raise PlanError(f"-o {out}: is a directory; name a file")
    if not out.parent.is_dir():
        raise PlanError(f"-o {out}: directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise PlanError(f"-o {out}: directory {out.parent} is not writable")


Targets = Annotated[
    list[str] | None,
    typer.Option("--target", metavar="ADDR", help="only this address and what it needs (repeatable)"),
]
Replaces = Annotated[
    list[str] | None,
    typer.Option("--replace", metavar="ADDR", help="force replacing this address (repeatable)"),
]
LockTimeout = Annotated[
    str,
    typer.Option("--lock-timeout", metavar="DURATION", help="wait this long for the state lock, e.g. 30s"),
]


def plan(
    args: Annotated[
        list[str] | None, typer.Argument(help=_ARGS_HELP, show_default=False, metavar=_ARGS_METAVAR)
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", metavar="FILE", help="save the plan to FILE for `apply FILE`"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the plan as JSON (format_version 1)")
    ] = False,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="exit 0 no changes, 1 error, 2 changes")
    ] = False,
    target: Targets = None,
    replace: Replaces = None,
    refresh_only: Annotated[bool, typer.Option("--refresh-only", help="only show drift")] = False,
    destroy: Annotated[bool, typer.Option("--destroy", help="plan destroying everything")] = False,
    stack: StackDir = None,
) -> None:
    """Show what apply would do: refresh, then diff the stack against the state."""
    from zsconf.render import plan_json

    directory, overrides = _split(args, stack)
    if out is not None:
        _check_writable(out)
    eng = _engine(directory, read_only=True)
    p = eng.plan(
        overrides, targets=target or [], replace=replace or [], destroy=destroy, refresh_only=refresh_only
    )
    if as_json:
        sys.stdout.write(plan_json(p) + "\n")
    else:
        _print_plan(p)
    if out is not None:
        out.write_text(plan_json(p))
        if not as_json:
            _err(f"Saved the plan to {out}; apply it with `zsconf apply {out}`.")
    if not p.can_apply():
        sys.exit(1)
    if detailed_exitcode:
        sys.exit(2 if p.has_changes() else 0)
    sys.exit(0)


def _print_plan(p: Plan) -> None:
    from zsconf.cli.output import console
    from zsconf.render import plan_text

    out = console()
    color = out.is_terminal
    out.print(plan_text(p, color=color), markup=color, highlight=False)


def _err(msg: str) -> None:
    from zsconf.cli.output import err_console

    err_console().print(msg, markup=False, highlight=False)


def _confirm(auto_approve: bool, what: str) -> None:
    if auto_approve:
        return
    if not sys.stdin.isatty():
        from zsconf.errors import PlanError

        raise PlanError(f"not a terminal: refusing to {what} without --auto-approve")
    answer = input(f"Do you want to {what}? Only 'yes' will be accepted: ")
    if answer.strip() != "yes":
        _err(f"{what.capitalize()} cancelled.")
        sys.exit(1)


def _apply_common(eng: Engine, p: Plan, *, parallelism: int, wait: bool, locked: bool, saved: bool) -> None:
    result = run_apply(eng, p, parallelism=parallelism, wait=wait, locked=locked, saved=saved)
    sys.exit(0 if result.ok else 1)


def run_apply(
    eng: Engine, p: Plan, *, parallelism: int, wait: bool, locked: bool, saved: bool, forget: bool = True
) -> Any:
    """Apply with a live table on a terminal (a line per step otherwise); prints the summary and
    returns the ApplyResult. Also used by `zsconf up`. A plan without actions is applied too: the
    gateway is converged and keys an interrupted apply created are shown. With `forget` the new
    keys, once printed, are not kept any longer (`up` forgets them after its banner)."""
    from zsconf.cli.output import console
    from zsconf.keys import forget_keys
    from zsconf.render import result_text

    out = console()
    if not p.actionable():
        result = eng.apply(p, parallelism=parallelism, wait=wait, locked=locked, saved=saved)
    elif out.is_terminal:
        from rich.live import Live
        from rich.table import Table

        rows: dict[str, tuple[str, str]] = {c.address: ("waiting", "") for c in p.actionable()}

        def table() -> Table:
            t = Table(show_header=True, header_style="bold")
            for col in ("resource", "status", "detail"):
                t.add_column(col)
            for addr, (st, msg) in rows.items():
                t.add_row(addr, st, msg)
            return t

        with Live(table(), console=out, refresh_per_second=4) as live:

            def on_event(addr: str, phase: str, msg: str) -> None:
                rows[addr] = ({"start": "working", "done": "done", "failed": "FAILED"}.get(phase, phase), msg)
                live.update(table())

            result = eng.apply(
                p, parallelism=parallelism, wait=wait, locked=locked, saved=saved, on_event=on_event
            )
    else:

        def on_event(addr: str, phase: str, msg: str) -> None:
            if phase != "start":
                out.print(f"{addr}: {phase} {msg}".rstrip(), markup=False, highlight=False)

        result = eng.apply(
            p, parallelism=parallelism, wait=wait, locked=locked, saved=saved, on_event=on_event
        )
    text = result_text(result)
    if text:
        out.print(text, markup=False, highlight=False)
    if forget:
        sys.stdout.flush()
        forget_keys(eng.stack_dir, result.new_keys)
    return result


def apply(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="the stack directory (default: the stack containing the current directory) or a plan "
            "saved with `zsconf plan -o FILE`, then Hydra overrides",
            show_default=False,
            metavar="DIR|PLANFILE OVERRIDE",
        ),
    ] = None,
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="do not ask for 'yes'")] = False,
    parallelism: Annotated[int, typer.Option("--parallelism", help="independent actions at once")] = 4,
    wait: Annotated[bool, typer.Option("--wait", help="follow jobs to completion")] = False,
    lock_timeout: LockTimeout = "0s",
    target: Targets = None,
    replace: Replaces = None,
    stack: StackDir = None,
) -> None:
    """Make the platform match the stack (or apply a saved plan file)."""
    wait_s = lock_seconds(lock_timeout)  # a usage error before anything is opened
    first = (args or [None])[0]
    if first and Path(first).is_file():
        p = _read_plan(Path(first))
        eng = _engine(stack_dir(None, Path(p.stack_dir)))
        # A saved plan was approved when it was saved (as in Terraform): no question.
        with eng.store.locked("apply", wait_s):
            _apply_common(eng, p, parallelism=parallelism, wait=wait, locked=True, saved=True)
        return
    directory, overrides = _split(args, stack)
    eng = _engine(directory)
    with eng.store.locked("apply", wait_s):
        p = eng.plan(overrides, targets=target or [], replace=replace or [])
        _print_plan(p)
        if not p.can_apply():
            sys.exit(1)
        if p.actionable():
            _confirm(auto_approve, "apply these changes")
        _apply_common(eng, p, parallelism=parallelism, wait=wait, locked=True, saved=False)


def destroy(
    args: Annotated[
        list[str] | None, typer.Argument(help=_ARGS_HELP, show_default=False, metavar=_ARGS_METAVAR)
    ] = None,
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="do not ask for 'yes'")] = False,
    parallelism: Annotated[int, typer.Option("--parallelism")] = 4,
    lock_timeout: LockTimeout = "0s",
    target: Targets = None,
    stack: StackDir = None,
) -> None:
    """Destroy every resource of the stack recorded in the state."""
    directory, overrides = _split(args, stack)
    wait_s = lock_seconds(lock_timeout)
    eng = _engine(directory)
    with eng.store.locked("destroy", wait_s):
        p = eng.plan(overrides, targets=target or [], destroy=True)
        _print_plan(p)
        if not p.can_apply():
            sys.exit(1)
        if not p.actionable():
            sys.exit(0)
        _confirm(auto_approve, "destroy these resources")
        _apply_common(eng, p, parallelism=parallelism, wait=False, locked=True, saved=False)


def _state_dict(eng: Engine, address: str) -> dict[str, Any]:
    row = eng.store.resource(address)
    if row is None:
        from zsconf.errors import StateError

        raise StateError(f"no resource {address!r} in the state (see `zsconf state list`)")
    d = row.model_dump(mode="json")
    last = eng.store.last_run(address)
    d["last_run"] = last.model_dump(mode="json") if last else None
    if row.kind == "model":
        d["versions"] = [v.model_dump(mode="json") for v in eng.store.model_versions(row.tenant, row.name)]
    return d


def show(
    address: Annotated[
        str | None, typer.Argument(help="one address, e.g. deployment/acme/chat; default all")
    ] = None,
    stack: StackDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Live view: status, outputs (endpoints, model versions), last run."""
    from zsconf.cli.admin_client import connect
    from zsconf.cli.output import console, print_json

    directory = stack_dir(stack)
    client = connect(directory)
    if client is not None:  # the daemon keeps the state current: ask it, take no lock
        with client:
            data = client.resources(address)
        if address and not data:
            from zsconf.errors import StateError

            raise StateError(f"no resource {address!r} in the state (see `zsconf state list`)")
    else:
        from zsconf.engine import finish_runs
        from zsconf.errors import StateLockedError

        eng = _engine(directory, read_only=True)
        if not eng.store.ephemeral:
            try:
                with eng.store.locked("show", 5):
                    finish_runs(eng.store, eng.executor)
            except StateLockedError:
                pass  # someone else is applying: show what the state says
        addrs = [address] if address else sorted(eng.store.resources())
        data = [_state_dict(eng, a) for a in addrs]
    if as_json:
        print_json(data if address is None else data[0])
        return
    out = console()
    for d in data:
        out.print(f"{d['address']}  [{d['status']}]  generation {d['generation']}", markup=False)
        if d.get("axes"):
            a = d["axes"]
            out.print(f"    {a['sync']}/{a['health']}: {a['reason']}".rstrip(": "), markup=False)
        for k, v in (d.get("outputs") or {}).items():
            out.print(f"    {k}: {json.dumps(v, default=str)}", markup=False, highlight=False)
        for v in d.get("versions", []):
            out.print(
                f"    v{v['version']}: {v['path']} ({v['format']}{', ' + v['quantization'] if v['quantization'] else ''})",
                markup=False,
            )
        if d.get("last_run"):
            r = d["last_run"]
            out.print(f"    last run {r['run_id']}: {r['status']} pid {r['pid']}", markup=False)


state_app = typer.Typer(
    help="Inspect or edit the state: list, show ADDRESS, rm ADDRESS.", no_args_is_help=True
)


@state_app.command("list")
def state_list(stack: StackDir = None) -> None:
    """Every address in the state."""
    eng = _engine(stack_dir(stack, state_only=True), read_only=True)
    for addr, row in sorted(eng.store.resources().items()):
        sys.stdout.write(f"{addr}\t{row.status}\n")


@state_app.command("show")
def state_show(
    address: Annotated[str, typer.Argument(help="e.g. deployment/acme/chat")], stack: StackDir = None
) -> None:
    """One resource's state record as JSON."""
    from zsconf.cli.output import print_json

    print_json(_state_dict(_engine(stack_dir(stack, state_only=True), read_only=True), address))


@state_app.command("rm")
def state_rm(
    address: Annotated[str, typer.Argument(help="e.g. deployment/acme/chat")],
    stack: StackDir = None,
    lock_timeout: LockTimeout = "0s",
) -> None:
    """Forget a resource without touching what runs (zsconf will plan to create it again)."""
    from zsconf.errors import StateError

    wait_s = lock_seconds(lock_timeout)
    eng = _engine(stack_dir(stack, state_only=True), read_only=True)
    with eng.store.locked("state rm", wait_s):
        if not eng.store.remove_resource(address):
            raise StateError(f"no resource {address!r} in the state")
    _err(f"Removed {address} from the state.")


def force_unlock(
    lock_id: Annotated[str, typer.Argument(help="the lock id the 'state is locked' error names")],
    stack: StackDir = None,
) -> None:
    """Remove a state lock whose holder ran on another host and is gone. A lock left by a
    process that died on this host needs no command: the next one takes it over."""
    eng = _engine(stack_dir(stack, state_only=True), read_only=True)
    info = eng.store.force_unlock(lock_id)
    _err(f"Removed {info.describe()}")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
    app.command("apply")(apply)
    app.command("destroy")(destroy)
    app.command("show")(show)
    app.add_typer(state_app, name="state")
    app.command("force-unlock")(force_unlock)
