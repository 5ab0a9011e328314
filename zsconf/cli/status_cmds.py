"""`zsconf status | events | logs`: what the platform is doing, from the daemon or from the state.

Registered by `zsconf.cli.main`. Each command asks the stack's daemon through its admin API when
one runs (`zsconf.cli.admin_client.connect`) and otherwise reads the state store and the run
folders directly (`status` then computes the statuses now, from a fresh plan and refresh). Module
top level stays light (`zsconf --help` imports it): the engine, SQLAlchemy, httpx and the daemon
helpers are imported inside the commands.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from zsconf.cli.stackdir import StackDir, stack_dir
from zsconf.names import FINISHED_RUN

if TYPE_CHECKING:
    from zsconf.cli.admin_client import AdminClient
    from zsconf.state import Store

__all__ = ["register"]

_HEALTH_STYLE = {"Healthy": "green", "Progressing": "cyan", "Degraded": "red", "Suspended": "magenta",
                 "Missing": "yellow"}  # fmt: skip
_SYNC_STYLE = {"Synced": "green", "OutOfSync": "yellow", "Unknown": "dim"}
_SUCCESS_EVENTS = ("created", "updated in-place", "replaced", "submitted", "run_succeeded")
GATEWAY = "platform/gateway"  # zsconf.engine.gateway.GATEWAY (not imported: the engine is heavy)


def ago(ts: float, now: float | None = None) -> str:
    """'12s ago', '3m ago', '5h ago', '2d ago'."""
    secs = max(0, int((time.time() if now is None else now) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"


def _store(directory: Path) -> Store:
    """The stack's state store (`directory` is a stack: `stack_dir` checked it), read only."""
    from zsconf.state import open_store

    return open_store(None, directory, create=False)


def address_arg(text: str | None) -> str | None:
    """A resource address as the CLI prints it; a stack directory given in its place is
    refused with the command that names it."""
    if text is not None and (Path(text) / "stack.yaml").is_file():
        from zsconf.cli.stackdir import StackNotFoundError

        raise StackNotFoundError(
            f"{text} is a stack directory, not an address: name the stack with -C {text}"
        )
    return text


def _connect(directory: Path) -> AdminClient | None:
    from zsconf.cli.admin_client import connect

    return connect(directory)


@contextlib.contextmanager
def _ctrl_c_sets() -> Iterator[threading.Event]:
    """Ctrl-C sets the event instead of raising KeyboardInterrupt wherever a polling loop is: raised
    inside SQLAlchemy's connection pool it can leave the pool's lock held, and the exit then hangs
    on it. A SIGINT ignored by whoever started us stays ignored."""
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield stop
        return
    old = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, old)


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")


# -- status -------------------------------------------------------------------------------------
def _recent_failures(store: Store) -> dict[str, str]:
    """address -> message of its last failed apply action, unless something succeeded since (what
    the daemon passes from its own applies; without one, read back from the events)."""
    from daemon.records import query_events

    out: dict[str, str] = {}
    for ev in query_events(store, tail=2000, limit=2000):
        if not ev.address:
            continue
        if ev.event == "failed":
            out[ev.address] = ev.message
        elif ev.event in _SUCCESS_EVENTS:
            out.pop(ev.address, None)
    return out


def _compute_now(directory: Path) -> list[dict[str, Any]]:
    from daemon.status import compute_statuses
    from zsconf.engine import Engine
    from zsconf.errors import StackError, ZsconfError
    from zsconf.plans import Action

    eng = Engine(directory, read_only=True)
    try:
        plan, error = eng.plan(), None
    except StackError as exc:
        plan, error = None, "; ".join(str(d) for d in exc.diagnostics) or str(exc)
    except ZsconfError as exc:
        plan, error = None, str(exc)
    try:
        observed = eng.refresh()
    except ZsconfError:
        observed = None
    orphans = {c.address for c in plan.changes if c.action is Action.DELETE} if plan else set()
    statuses = compute_statuses(plan, eng.store, observed, orphans, _recent_failures(eng.store), error)
    eng.close()
    return [s.as_dict() for s in statuses.values()]


def status(
    positional: Annotated[
        Path | None,
        typer.Argument(
            help="stack directory (default: the stack containing the current one)", show_default=False
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON: {source, statuses: [...]}")] = False,
    stack: StackDir = None,
) -> None:
    """Every resource's two status axes, with the reason and the time of the last change.

    SYNC says whether the live platform matches the files: Synced; OutOfSync (apply would create,
    change, replace or delete it; or it is an orphan, in the state but gone from the files, which
    `zsconf daemon --prune` deletes); Unknown (the stack does not load: the reason says why).

    HEALTH says whether the thing works: Healthy; Progressing (a job queued or running, a server
    starting); Degraded (a job failed, an instance died, the last apply of it failed); Suspended
    (stopped on purpose: `state: stopped`, a cancelled job); Missing (not created yet, or its model
    folder is gone).

    With a daemon running this is what it recorded on its last pass; without one it is computed
    now from a fresh plan and refresh (slower, and SINCE is only known for what a daemon recorded).
    """
    directory = stack_dir(stack, positional)
    client = _connect(directory)
    started: float | None = None
    if client is not None:
        with client:
            data = client.statuses()
        rows, source = data["statuses"], "daemon"
        note = f"(daemon pid {client.info.get('pid')} at {client.url}{'' if data.get('leader') else ', standby'})"
    if client is not None and not rows:  # its first pass is still running
        started = time.time()
        rows, source, note = (
            _compute_now(directory),
            "computed",
            "(daemon has recorded nothing yet: computed now)",
        )
    elif client is None:
        started = time.time()
        rows, source, note = _compute_now(directory), "computed", "(no daemon: computed now)"
    if as_json:
        from zsconf.cli.output import print_json

        print_json({"source": source, "statuses": rows})
        return
    _print_statuses(rows, note, started)


def _print_statuses(rows: list[dict[str, Any]], note: str, unknown_after: float | None = None) -> None:
    """Aligned columns, never wrapped (a pipe gets whole lines); colours only on a terminal.
    SINCE shows '-' for a time that is only the moment of computing (`unknown_after`)."""
    from rich.text import Text

    from zsconf.cli.output import console

    out = console()
    if not rows:
        out.print(f"No resources. {note}", markup=False)
        return
    now = time.time()

    def since(r: dict[str, Any]) -> str:
        return "-" if unknown_after is not None and r["since"] >= unknown_after else ago(r["since"], now)

    cells = [(r["address"], r["sync"], r["health"], since(r), r["reason"] or "") for r in rows]
    head = ("ADDRESS", "SYNC", "HEALTH", "SINCE", "REASON")
    widths = [max(len(c[i]) for c in [*cells, head]) for i in range(4)]
    line = Text("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)) + "  REASON", style="bold")
    out.print(line, soft_wrap=True)
    for c in cells:
        t = Text(c[0].ljust(widths[0]) + "  ")
        t.append(c[1].ljust(widths[1]), style=_SYNC_STYLE.get(c[1], ""))
        t.append("  ")
        t.append(c[2].ljust(widths[2]), style=_HEALTH_STYLE.get(c[2], ""))
        t.append("  " + c[3].ljust(widths[3]) + "  " + c[4])
        out.print(t, soft_wrap=True)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["health"]] = counts.get(r["health"], 0) + 1
    synced = sum(1 for r in rows if r["sync"] == "Synced")
    summary = ", ".join(f"{n} {h}" for h, n in sorted(counts.items()))
    out.print(f"{len(rows)} resources: {synced} Synced; {summary} {note}", markup=False, soft_wrap=True)


# -- events -------------------------------------------------------------------------------------
def _since(text: str | None) -> tuple[int, float | None]:
    """--since: an event id (digits) or a duration back from now (10m, 2h, 1d)."""
    if not text:
        return 0, None
    if text.isdigit():
        return int(text), None
    from schemas.common import parse_duration

    try:
        return 0, time.time() - parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}; or an event id such as 1200", param_hint="--since") from None


def _event_line(ev: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(ev["ts"]).strftime("%Y-%m-%d %H:%M:%S")
    return f"{when}  #{ev['id']:<5} {ev['address'] or '-':<34} {ev['event']:<16} {ev['message']}"


def events(
    address: Annotated[
        str | None, typer.Argument(help="only this address, e.g. deployment/acme/chat")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new events (Ctrl-C stops)")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option("--since", help="after this event id (e.g. 1200), or this long ago (10m, 2h, 1d)"),
    ] = None,
    tail: Annotated[
        int | None,
        typer.Option("--tail", "-n", help="only the newest N (default 30 without --since, else all)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    stack: StackDir = None,
) -> None:
    """What happened, oldest first: applies, runs submitted/succeeded/failed, status transitions
    (`status`: sync/health changed), restarts, auto-stops, drift.

    Examples: `zsconf events -f` (watch everything), `zsconf events finetune/acme/support-lora
    --since 2h`, `zsconf events --since 1200 --json` (resume after the last id you saw)."""
    address = address_arg(address)
    directory = stack_dir(stack)
    since_id, since_ts = _since(since)
    n = tail if tail is not None else (None if since else 30)
    client = _connect(directory)

    def emit(evs: list[dict[str, Any]]) -> None:
        for ev in evs:
            sys.stdout.write((json.dumps(ev, ensure_ascii=False) if as_json else _event_line(ev)) + "\n")
        sys.stdout.flush()

    last: int | None = None
    try:
        if client is not None:
            from zsconf.cli.admin_client import AdminError

            try:
                with client:
                    data = client.events(since=since_id, address=address, since_ts=since_ts, tail=n)
                    emit(data["events"])
                    last = data["last_id"]
                    while follow:
                        data = client.events(since=last, address=address, wait=25.0)
                        emit(data["events"])
                        last = data["last_id"]
                return
            except AdminError as exc:
                if last is None:
                    raise
                _note(f"(the daemon stopped answering: {exc}; following the state store)")
        from daemon.records import event_dict, newest_event_id, query_events

        with _ctrl_c_sets() as stopped:
            store = _store(directory)
            if last is None:
                newest = newest_event_id(store)
                found = [event_dict(e) for e in query_events(store, since_id, address, since_ts, n)]
                emit(found)
                last = found[-1]["id"] if found else max(since_id, newest)
            while follow and not stopped.wait(0.5):
                newest = newest_event_id(store)
                found = [event_dict(e) for e in query_events(store, last, address)]
                emit(found)
                last = found[-1]["id"] if found else max(last, newest)
    except KeyboardInterrupt:  # Ctrl-C while the daemon answered (its long poll is plain blocking I/O)
        return


# -- logs ---------------------------------------------------------------------------------------
class _Source:
    """Runs and their logs, from the daemon or from the state and the run folders."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.client = _connect(directory)
        self.store = None if self.client is not None else _store(directory)

    def runs(self, address: str) -> list[dict[str, Any]]:
        if address == GATEWAY:
            # The gateway is no resource and has no run rows: its folder is fixed (zsconf.engine.gateway).
            wd = self.directory.resolve() / ".zsconf" / "gateway" / "run"
            return [
                {"run_id": "gateway", "workdir": str(wd), "status": "running", "handle": {}, "local": True}
            ]
        if self.client is not None:
            return self.client.runs(address)
        assert self.store is not None
        return [r.model_dump(mode="json") for r in self.store.runs(address)]

    def run_status(self, run_id: str) -> str:
        assert self.store is not None
        run = self.store.run(run_id)
        return run.status if run is not None else "unknown"

    def read(self, run: dict[str, Any], offset: int, wait: float) -> dict[str, Any]:
        if self.client is not None and not run.get("local"):
            return self.client.log(run["run_id"], offset, wait)
        from daemon.records import read_log

        text, nxt, size = read_log(run["workdir"], offset)
        st = run["status"] if run.get("local") else self.run_status(run["run_id"])
        if not text and wait and st not in FINISHED_RUN:
            time.sleep(min(wait, 0.5))
        return {"data": text, "offset": nxt, "size": size, "status": st,
                "finished": st in FINISHED_RUN and nxt >= size}  # fmt: skip

    def read_following(self, run: dict[str, Any], offset: int, wait: float) -> dict[str, Any]:
        """`read`, going on from the state and the run folder if the daemon stops answering."""
        from zsconf.cli.admin_client import AdminError

        try:
            return self.read(run, offset, wait)
        except AdminError as exc:
            if self.client is None:
                raise
            _note(f"(the daemon stopped answering: {exc}; reading the run folder)")
            self.client.close()
            self.client = None
            self.store = _store(self.directory)
            return self.read(run, offset, wait)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.store is not None:
            self.store.close()


def _pick_runs(src: _Source, address: str, run_id: str | None) -> list[dict[str, Any]]:
    from zsconf.errors import StateError

    runs = src.runs(address)
    if run_id:
        mine = [r for r in runs if r["run_id"] == run_id]
        if not mine:
            known = ", ".join(r["run_id"] for r in runs[-5:]) or "none"
            raise StateError(f"{address} has no run {run_id} (latest: {known})")
        return mine
    if not runs:
        raise StateError(f"{address} has no runs (see `zsconf status` and `zsconf events {address}`)")
    if address.startswith("deployment/"):
        live = [r for r in runs if r["status"] not in FINISHED_RUN]
        return live or runs[-1:]
    return runs[-1:]


def _prefix(run: dict[str, Any], many: bool) -> str:
    if not many:
        return ""
    index = (run.get("handle") or {}).get("index")
    return f"[{'i' + str(index) if index is not None else run['run_id']}] "


def _write(text: str, prefix: str, carry: dict[str, str], key: str) -> None:
    """Print complete lines with the prefix; keep a trailing partial line for the next chunk."""
    if not prefix:
        sys.stdout.write(text)
        return
    buf = carry.get(key, "") + text
    *lines, rest = buf.split("\n")
    carry[key] = rest
    for line in lines:
        sys.stdout.write(prefix + line + "\n")


def logs(
    address: Annotated[
        str, typer.Argument(help="a job or deployment address, e.g. finetune/acme/support-lora")
    ],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing until the run ends (Ctrl-C stops)")
    ] = False,
    run_id: Annotated[str | None, typer.Option("--run", help="this run id instead of the latest")] = None,
    tail: Annotated[int | None, typer.Option("--tail", "-n", help="start with the last N lines only")] = None,
    stack: StackDir = None,
) -> None:
    """A runner's log (its stdout and stderr, `<run folder>/runner.log`).

    For a job: its latest run (`--run ID` for an earlier attempt; ids in `zsconf show ADDRESS`).
    For a deployment: every running instance, each line prefixed with [i<index>].
    `platform/gateway`: the gateway's log. With --follow it keeps printing new lines until the
    run ends (a job) or Ctrl-C (a deployment, the gateway)."""
    address = address_arg(address) or ""
    src = _Source(stack_dir(stack))
    try:
        runs = _pick_runs(src, address, run_id)
        many = len(runs) > 1
        offsets: dict[str, int] = {}
        carry: dict[str, str] = {}
        for run in runs:
            rid = run["run_id"]
            start = 0
            if tail is not None:
                start = -min(1 << 20, max(65536, tail * 512))  # one chunk (the API caps at 1 MB)
            chunk = src.read(run, start, 0.0)
            text = chunk["data"]
            if tail is not None:
                lines = text.splitlines(keepends=True)
                if chunk["offset"] - len(text.encode()) > 0 and lines:
                    lines = lines[1:]  # the first line was cut by the byte offset
                text = "".join(lines[-tail:] if tail else [])
            _write(text, _prefix(run, many), carry, rid)
            offsets[rid] = chunk["offset"]
            # Large logs come in 1 MB chunks: read on to the end.
            while chunk["offset"] < chunk["size"]:
                chunk = src.read(run, offsets[rid], 0.0)
                _write(chunk["data"], _prefix(run, many), carry, rid)
                offsets[rid] = chunk["offset"]
        sys.stdout.flush()
        active = {r["run_id"]: r for r in runs}
        while follow and active:
            wait = 25.0 if len(active) == 1 else 0.0
            for rid, run in list(active.items()):
                chunk = src.read_following(run, offsets[rid], wait)
                _write(chunk["data"], _prefix(run, many), carry, rid)
                offsets[rid] = chunk["offset"]
                if chunk["finished"]:
                    del active[rid]
            sys.stdout.flush()
            if len(active) > 1:
                time.sleep(0.5)
        for rid, rest in carry.items():
            if rest:
                run = next(r for r in runs if r["run_id"] == rid)
                sys.stdout.write(_prefix(run, many) + rest + "\n")
    except KeyboardInterrupt:
        pass
    finally:
        sys.stdout.flush()
        src.close()


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("events")(events)
    app.command("logs")(logs)
