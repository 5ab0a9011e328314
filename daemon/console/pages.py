"""The console's routes on the admin server: server-rendered pages (Jinja), their JSON for charts,
server-sent events, the playground's stream through the gateway, and the GitOps-safe actions.

`handlers(view, stopping, token)` returns the Litestar route handlers; `daemon.admin` mounts them
behind `daemon.console.gate` (sessions, CSRF, security headers). Store reads run in worker threads.
Nothing here edits a spec: the spec view names the file and line to change.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.console import data
from daemon.console.i18n import LANGS, gettext, pick
from daemon.console.session import csrf_token

if TYPE_CHECKING:
    from litestar import Request

__all__ = ["STATIC_DIR", "handlers", "login_html"]

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
NAV = ("overview", "training", "models", "usage", "deployments", "playground", "events", "keys")
LANG_COOKIE = "zsconf_lang"


# -- templates -----------------------------------------------------------------------------------
def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, int(time.time() - ts))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m"
        if s >= 3600
        else f"{s // 60}m{s % 60:02d}s"
        if s >= 60
        else f"{s}s"
    )


def _size(n: int | None) -> str:
    if not n:
        return "-"
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if x < 1024 or unit == "GiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return str(n)


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}" if isinstance(x, float) and not x.is_integer() else f"{int(x):,}"


_env: Any = None


def _jinja() -> Any:
    global _env
    if _env is None:
        import jinja2

        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every value from the stack or the state is text, never markup
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(ago=_ago, duration=_duration, size=_size, when=_when, num=_num)
        _env = env
    return _env


def render_html(
    template: str, token: str, lang: str, path: str, query: str, nonce: str | None, authed: bool, **ctx: Any
) -> str:
    page = path.removeprefix("/console").strip("/").split("/")[0] or "overview"
    return _jinja().get_template(template).render(
        t=gettext(lang), lang=lang, other_lang="zh" if lang == "en" else "en", nav=NAV, page=page,
        csrf=csrf_token(token, nonce) if nonce else "", signed_in=authed, path=path, query=query, **ctx,
    )  # fmt: skip


def render(request: Request, template: str, token: str, status: int = 200, **ctx: Any) -> Any:
    from litestar import MediaType, Response

    asked = request.query_params.get("lang")
    lang = pick(asked, request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))
    gate = request.scope.get("zsconf") or {}
    html = render_html(template, token, lang, request.url.path, request.url.query or "", gate.get("nonce"),
                       bool(gate.get("authed")), **ctx)  # fmt: skip
    resp = Response(html, media_type=MediaType.HTML, status_code=status)
    if asked in LANGS:
        resp.set_cookie(LANG_COOKIE, lang, path="/", httponly=True, samesite="strict", max_age=365 * 86400)
    return resp


def login_html(scope: dict[str, Any], token: str, error: str = "") -> bytes:
    """The sign-in form for a request that has no session (rendered by the gate, before routing)."""
    from urllib.parse import parse_qs

    from daemon.console.session import read_cookies

    query = scope.get("query_string", b"").decode("latin-1")
    q = {k: v[0] for k, v in parse_qs(query).items()}
    accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept-language"), None)
    lang = pick(q.get("lang"), read_cookies(scope["headers"]).get(LANG_COOKIE), accept)
    path = scope["path"]
    nxt = q.get("next") or (path + (f"?{query}" if query else ""))
    return render_html(
        "login.html", token, lang, path, query, None, False, error=error, next=_safe_next(nxt)
    ).encode()


def _safe_next(nxt: str) -> str:
    """Only a path of this console: never an absolute URL to elsewhere."""
    return nxt if nxt.startswith("/console") and not nxt.startswith("/console/login") and "//" not in nxt \
        else "/console/"  # fmt: skip


# -- the handlers --------------------------------------------------------------------------------
def handlers(view: Any, stopping: threading.Event, token: str, cookie: str) -> list[Any]:
    import anyio
    from litestar import MediaType, Response, get, post
    from litestar.params import FromPath
    from litestar.response import Redirect, ServerSentEvent, Stream

    store = view.store
    loaded_cache: dict[str, Any] = {"sig": None, "loaded": None}

    async def off(fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    def loaded_stack() -> Any:
        """The stack as the files say now, loaded again only when a file it read changed (a new
        file is named in stack.yaml, whose change is seen)."""
        from zsconf.loading import load_stack

        root = Path(view.stack_dir)

        def signature(loaded: Any) -> Any:
            files = [*(loaded.sources if loaded is not None else []), root / "stack.yaml"]
            try:
                return tuple((str(p), p.stat().st_mtime_ns) for p in files)
            except OSError:
                return None

        if loaded_cache["sig"] is None or signature(loaded_cache["loaded"]) != loaded_cache["sig"]:
            try:
                loaded_cache["loaded"] = load_stack(root)
            except Exception:  # a stack that does not load shows no spec, not an error page
                loaded_cache["loaded"] = None
            loaded_cache["sig"] = signature(loaded_cache["loaded"])
        return loaded_cache["loaded"]

    def page(request: Request, template: str, **ctx: Any) -> Any:
        return render(request, template, token, **ctx)

    # -- sign in -----------------------------------------------------------------------------
    @get("/console/login")
    async def login_form(request: Request) -> Any:
        return Response(login_html(request.scope, token), media_type=MediaType.HTML)

    @post("/console/login")
    async def login(request: Request) -> Any:
        import hmac

        from daemon.console.session import cookie_header, issue

        form = await request.form()
        given = str(form.get("token") or "").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return Response(login_html(request.scope, token, "login.wrong"), media_type=MediaType.HTML,
                            status_code=401)  # fmt: skip
        resp = Redirect(_safe_next(str(form.get("next") or "")), status_code=303)
        resp.headers["set-cookie"] = cookie_header(cookie, issue(token))
        return resp

    @post("/console/logout")
    async def logout() -> Any:
        from daemon.console.session import cookie_header

        resp = Redirect("/console/login", status_code=303)
        resp.headers["set-cookie"] = cookie_header(cookie, "", max_age=0)
        resp.headers["hx-redirect"] = "/console/login"
        return resp

    # -- overview ------------------------------------------------------------------------------
    @get(["/console", "/console/overview"])
    async def overview(request: Request) -> Any:
        from zsconf.render import plan_text

        q = request.query_params
        found = await off(
            lambda: data.overview(store, q.get("kind", ""), q.get("tenant", ""), q.get("status", ""))
        )
        plan = await off(view.current_plan)
        last = getattr(view, "last_pass", None)
        done = await off(last) if last else None
        return page(request, "overview.html", o=found, plan=plan_text(plan) if plan is not None else None,
                    last=done[0] if done else None, last_at=done[1] if done else None,
                    kind=q.get("kind", ""), tenant=q.get("tenant", ""), status=q.get("status", ""))  # fmt: skip

    @post("/console/sync")
    async def sync(request: Request) -> Any:
        await off(view.trigger_sync, "requested in the console")
        return page(request, "flash.html", message="overview.sync_started")

    # -- one resource ------------------------------------------------------------------------
    @get("/console/resources/{address:path}")
    async def resource(request: Request, address: FromPath[str]) -> Any:
        address = address.strip("/")
        loaded = await off(loaded_stack)
        found = await off(data.resource_page, store, address, loaded)
        if found is None:
            return render(
                request, "error.html", token, status=404, message=f"no resource {address!r} in the state"
            )
        return page(request, "resource.html", r=found)

    @post("/console/jobs/{action:str}")
    async def job(request: Request, action: FromPath[str]) -> Any:
        from zsconf.engine.jobs import resume_job, stop_job
        from zsconf.errors import ZsconfError
        from zsconf.executors import default_executor

        if action not in ("stop", "resume"):
            return Response({"error": f"no job action {action!r} (stop, resume)"}, status_code=404)
        address = str((await request.form()).get("address") or "")
        executor = getattr(view, "executor", None) or default_executor(Path(view.stack_dir).resolve())
        fn = stop_job if action == "stop" else resume_job

        def act() -> str:
            with store.locked(f"job {action} (console)", 30):
                run = fn(store, executor, address)
            return f"{action}: {address} (run {run.run_id}, attempt {run.attempt})"

        try:
            message = await off(act)
        except ZsconfError as exc:
            return page(request, "flash.html", message=str(exc), error=True)
        return page(request, "flash.html", message=message)

    # -- training ----------------------------------------------------------------------------
    @get("/console/training")
    async def training(request: Request) -> Any:
        runs = await off(data.training, store)
        chosen = request.query_params.get("run") or (runs[0]["run_id"] if runs else "")
        current = next((r for r in runs if r["run_id"] == chosen), None)
        return page(request, "training.html", runs=runs, current=current)

    @get("/console/data/metrics/{run_id:str}")
    async def metrics(run_id: FromPath[str]) -> Any:
        run = await off(store.run, run_id)
        if run is None:
            return Response({"error": f"no run {run_id!r}"}, status_code=404)
        series = await off(data.metrics_series, run.workdir)
        from zsconf.names import FINISHED_RUN

        return {**series, "finished": run.status in FINISHED_RUN, "status": run.status}

    # -- models, deployments, keys -------------------------------------------------------------
    @get("/console/models")
    async def models(request: Request) -> Any:
        return page(request, "models.html", models=await off(data.models, store), metrics=data.EVAL_METRICS)

    @get("/console/deployments")
    async def deployments(request: Request) -> Any:
        return page(request, "deployments.html", deployments=await off(data.deployments, store))

    @get("/console/keys")
    async def keys(request: Request) -> Any:
        return page(request, "keys.html", groups=await off(data.keys, store))

    @post("/console/keys/{action:str}")
    async def key(request: Request, action: FromPath[str]) -> Any:
        from zsconf.errors import ZsconfError
        from zsconf.keys import NewKey, create_key, forget_keys, resolve_group, revoke_keys, rotate_key

        if action not in ("create", "revoke", "rotate"):
            return Response({"error": f"no key action {action!r} (create, revoke, rotate)"}, status_code=404)
        form = await request.form()
        ref, key_id = str(form.get("group") or ""), str(form.get("key") or "") or None
        stack = Path(view.stack_dir).resolve()

        def act() -> tuple[str | None, str, list[str]]:
            tenant, group = resolve_group(store, ref)
            if action == "revoke":
                return None, "", revoke_keys(store, tenant, group, key_id)
            if action == "rotate":
                secret, row, revoked = rotate_key(store, tenant, group, key_id, stack)
            else:
                secret, row = create_key(store, tenant, group, stack)
                revoked = []
            store.add_event(f"key_{action}d", f"key {row.id} {action}d in the console",
                            f"service_group/{tenant}/{group}")  # fmt: skip
            return secret, row.id, revoked

        try:
            secret, new_id, revoked = await off(act)
        except ZsconfError as exc:
            return page(request, "flash.html", message=str(exc), error=True)
        resp = page(request, "key_shown.html", secret=secret, key_id=new_id, revoked=revoked, group=ref)
        if secret is not None:  # shown now (in this response): the kept copy goes
            await off(forget_keys, stack, [NewKey("", new_id, "")])
        return resp

    # -- usage -------------------------------------------------------------------------------
    def usage_args(request: Request) -> dict[str, str]:
        q = request.query_params
        return {k: q.get(k, "") for k in ("group", "deployment", "key")} | {"range_": q.get("range", "1h")}

    @get("/console/usage")
    async def usage(request: Request) -> Any:
        args = usage_args(request)
        u = await off(lambda: data.usage(store, **args))
        return page(request, "usage.html", u=u, ranges=list(data.RANGES), args=args)

    @get("/console/data/usage")
    async def usage_data(request: Request) -> Any:
        args = usage_args(request)
        return await off(lambda: data.usage(store, **args))

    @get("/console/usage.csv")
    async def usage_csv(request: Request) -> Any:
        import io

        from zsconf.usage import query_usage, write_csv

        args = usage_args(request)
        span = data.RANGES.get(args["range_"], data.RANGES["1h"])[0]
        group = args["group"].split("/", 1)
        rows = await off(lambda: query_usage(store, span, group=group[-1] or None,
                                             tenant=group[0] if len(group) == 2 else None))  # fmt: skip
        buf = io.StringIO()
        write_csv([r for r in rows if (not args["deployment"] or r.deployment == args["deployment"])
                   and (not args["key"] or r.key_id == args["key"])], buf)  # fmt: skip
        return Response(buf.getvalue(), media_type="text/csv",
                        headers={"content-disposition": f'attachment; filename="usage-{args["range_"]}.csv"'})  # fmt: skip

    # -- playground --------------------------------------------------------------------------
    @get("/console/playground")
    async def playground(request: Request) -> Any:
        deps = await off(lambda: data.deployments(store, metrics=False))
        gw = getattr(view, "gateway_url", None)
        return page(request, "playground.html", deployments=deps, gateway=await off(gw) if gw else None,
                    chosen=request.query_params.get("deployment", ""))  # fmt: skip

    @post("/console/playground/chat")
    async def playground_chat(request: Request) -> Any:
        """The page's call, sent on to the gateway with the key typed in and streamed back as
        the gateway sends it (status, headers' content type and bytes unchanged)."""
        import httpx

        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return Response({"error": {"message": "the body must be a JSON object"}}, status_code=400)
        gw = getattr(view, "gateway_url", None)
        base = await off(gw) if gw else None
        if not base:
            return Response({"error": {"message": "the gateway is not running"}}, status_code=503)
        messages = [{"role": "system", "content": body["system"]}] if body.get("system") else []
        messages.append({"role": "user", "content": str(body.get("prompt") or "")})
        call = {"model": str(body.get("model") or ""), "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        for k in ("temperature", "max_tokens"):
            if body.get(k) not in (None, ""):
                call[k] = body[k]
        client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=5.0))
        req = client.build_request("POST", f"{base}/chat/completions", json=call,
                                   headers={"authorization": f"Bearer {body.get('key') or ''}"})  # fmt: skip
        try:
            upstream = await client.send(req, stream=True)
        except httpx.HTTPError as exc:
            await client.aclose()
            return Response({"error": {"message": f"gateway unreachable: {exc}"}}, status_code=502)

        async def relay() -> Any:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()
                await client.aclose()

        return Stream(relay(), status_code=upstream.status_code,
                      media_type=upstream.headers.get("content-type", "text/event-stream"))  # fmt: skip

    # -- events ------------------------------------------------------------------------------
    @get("/console/events")
    async def events(request: Request) -> Any:
        from daemon.records import query_events

        address = request.query_params.get("address", "")
        recent = await off(lambda: query_events(store, 0, address or None, None, 100))
        return page(request, "events.html", address=address,
                    events=[_event(e) for e in recent], last_id=recent[-1].id if recent else 0)  # fmt: skip

    @get("/console/events/stream", media_type="text/event-stream")
    async def events_stream(request: Request) -> Any:
        """New events as server-sent events (`id` = event id, so a reconnecting browser resumes
        with Last-Event-ID), polled from the store: other processes write events too."""
        from litestar.response import ServerSentEventMessage

        from daemon.records import newest_event_id, query_events

        address = request.query_params.get("address") or None
        since = request.headers.get("last-event-id") or request.query_params.get("since")
        last = int(since) if since and since.isdigit() else await off(newest_event_id, store)

        async def feed() -> Any:
            nonlocal last
            quiet = 0.0
            while not stopping.is_set():
                found = await off(lambda since=last: query_events(store, since, address, None, None, 200))
                for e in found:
                    last = e.id
                    yield ServerSentEventMessage(data=json.dumps(_event(e), ensure_ascii=False), id=str(e.id))
                quiet = 0.0 if found else quiet + 0.5
                if quiet >= 15:  # a comment now and then: a closed tab is noticed and the feed ends
                    quiet = 0.0
                    yield ServerSentEventMessage(comment="keep-alive")
                await asyncio.sleep(0.5)

        return ServerSentEvent(feed())

    return [login_form, login, logout, overview, sync, resource, job, training, metrics, models, deployments,
            keys, key, usage, usage_data, usage_csv, playground, playground_chat, events, events_stream]  # fmt: skip


def _event(e: Any) -> dict[str, Any]:
    from daemon.records import event_dict

    return {**event_dict(e), "address": e.address or "", "when": _when(e.ts)}
