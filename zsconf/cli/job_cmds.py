"""`zsconf job stop | resume | checkpoints ADDRESS`: control a fine-tune, compression or evaluation.

Registered by `zsconf.cli.main`. Calls `zsconf.engine.jobs` with the stack's state store and
executor; stop and resume take the state lock like apply. Module top level stays light
(`zsconf --help` imports it): the engine and SQLAlchemy are imported inside the commands.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from zsconf.cli.daemon_cmds import lock_seconds
from zsconf.cli.stackdir import StackDir, at_flag, stack_dir
from zsconf.names import JOB_KINDS

if TYPE_CHECKING:
    from zsconf.state import Store

__all__ = ["register", "resolve_job_address"]


Address = Annotated[
    str,
    typer.Argument(
        help="the job: finetune/TENANT/NAME, finetune/NAME (default tenant), or NAME when unique",
        show_default=False,
    ),
]
LockTimeout = Annotated[
    str,
    typer.Option(
        "--lock-timeout", help="wait this long for the state lock (a daemon pass or an apply may hold it)"
    ),
]

app = typer.Typer(
    name="job",
    help=(
        "Control jobs (fine-tunes, compressions, evaluations) the stack started.\n\n"
        "A stopped job stays stopped (the daemon does not restart it) until `zsconf job resume`, "
        "which starts a new attempt from the latest checkpoint. Follow a job with "
        "`zsconf logs ADDRESS -f`."
    ),
    no_args_is_help=True,
)


def _store(directory: Path) -> Store:
    from zsconf.cli.status_cmds import _store as open_stack_store

    return open_stack_store(directory)


def _default_tenant(directory: Path) -> str | None:
    """platform.default_tenant of the stack, None when the stack does not load."""
    try:
        from zsconf.loading import load_stack

        return load_stack(directory).stack.platform.default_tenant
    except Exception:  # a broken stack must not block stopping a job
        return None


def resolve_job_address(store: Store, text: str, directory: Path | None = None) -> str:
    """A full job address from `kind/tenant/name`, `kind/name` or a bare unique `name`."""
    from zsconf.errors import StateError

    jobs = sorted(a for a, r in store.resources().items() if r.kind in JOB_KINDS)
    parts = text.strip("/").split("/")
    if len(parts) == 3:
        matches = [text] if text in jobs else []
    elif len(parts) == 2:
        matches = [a for a in jobs if a.startswith(parts[0] + "/") and a.endswith("/" + parts[1])]
        if len(matches) > 1 and directory is not None:
            tenant = _default_tenant(directory)
            matches = [a for a in matches if a == f"{parts[0]}/{tenant}/{parts[1]}"] or matches
    else:
        matches = [a for a in jobs if a.rsplit("/", 1)[-1] == parts[-1]]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        listing = ", ".join(jobs) if jobs else "none in the state (apply the stack first)"
        raise StateError(f"no job {text!r}; jobs: {listing}")
    raise StateError(f"{text!r} is ambiguous: {', '.join(matches)} (give the full address)")


def stop(address: Address, stack: StackDir = None, lock_timeout: LockTimeout = "30s") -> None:
    """Stop a running or queued job. A training run finishes the step in flight and checkpoints it
    (SIGKILL after 30 s). The job keeps its checkpoints and is not restarted automatically;
    `zsconf job resume ADDRESS` continues it from the latest one."""
    from zsconf.cli.output import console
    from zsconf.engine.jobs import stop_job
    from zsconf.executors import default_executor
    from zsconf.executors.supervise import latest_checkpoint

    wait_s = lock_seconds(lock_timeout)
    directory = stack_dir(stack)
    store = _store(directory)
    addr = resolve_job_address(store, address, directory)
    with store.locked("job stop", wait_s):
        run = stop_job(store, default_executor(directory.resolve()), addr)
    ck = latest_checkpoint(run.workdir)
    where = f"latest checkpoint: {ck.name}" if ck else "no checkpoint was written yet"
    console().print(f"[yellow]stopped[/] {addr} (run {run.run_id}); {where}")
    console().print(f"resume with: zsconf job resume{at_flag(directory)} {addr}", markup=False)


def resume(address: Address, stack: StackDir = None, lock_timeout: LockTimeout = "30s") -> None:
    """Start a stopped or failed job again from its latest checkpoint (a new attempt in the same
    run folder, so model, optimizer and data position continue where they were saved)."""
    from zsconf.cli.output import console
    from zsconf.engine.jobs import resume_job
    from zsconf.executors import default_executor

    wait_s = lock_seconds(lock_timeout)
    directory = stack_dir(stack)
    store = _store(directory)
    addr = resolve_job_address(store, address, directory)
    with store.locked("job resume", wait_s):
        run = resume_job(store, default_executor(directory.resolve()), addr)
    frm = f"from {Path(run.checkpoints[0]).name}" if run.checkpoints else "from the start (no checkpoint)"
    console().print(f"[green]resumed[/] {addr} as run {run.run_id} (attempt {run.attempt}), {frm}")
    console().print(f"follow it with: zsconf logs{at_flag(directory)} {addr} -f", markup=False)


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def checkpoints(address: Address, stack: StackDir = None) -> None:
    """List a job's checkpoints (step, time, size, folder); the latest, marked *, is where
    `zsconf job resume` continues."""
    from rich.table import Table

    from zsconf.cli.output import console
    from zsconf.engine.jobs import list_checkpoints

    directory = stack_dir(stack)
    store = _store(directory)
    addr = resolve_job_address(store, address, directory)
    items = list_checkpoints(store, addr)
    if not items:
        console().print(f"{addr} has no checkpoints yet")
        return
    table = Table(title=f"checkpoints of {addr}")
    for col in ("", "step", "time", "loss", "val loss", "size", "path"):
        table.add_column(col, justify="left" if col in ("", "time", "path") else "right")
    for i, c in enumerate(items):
        latest = i == len(items) - 1
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.created))
        table.add_row("*" if latest else "", "-" if c.step is None else str(c.step), when, _loss(c.loss),
                      _loss(c.validation_loss), _size(c.size_bytes),
                      c.path + (" (latest)" if latest else ""))  # fmt: skip
    console().print(table)


app.command("stop")(stop)
app.command("resume")(resume)
app.command("checkpoints")(checkpoints)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="job")
