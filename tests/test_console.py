"""The web console (daemon/console) on a real admin server over loopback: sign-in, CSRF, security
headers and escaping with httpx; the pages in a real browser (Debian's Chromium through
Playwright) at 1280 and 390 pixels. The state is a small applied stack plus hand-made rows: a
training run with its metrics.jsonl, usage records with known latencies, a description that holds
a script. The quickstart's end-to-end browser walk (a real daemon, gateway and trained model) is
in test_quickstart.py.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_plan import make_stack
from test_status_cli import SMALL

from zsconf.state import ResourceRow, RunRow, UsageRecord

EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
PAGES = ("overview", "resources/finetune/acme/tune", "training", "models", "usage", "deployments", "playground",
         "events", "keys")  # fmt: skip
LATENCIES = [float(x) for x in range(10, 110)]  # 100 calls in the last minute bucket: p50 59, p99 108


class View:
    def __init__(self, stack_dir: Path) -> None:
        from zsconf.state import open_store

        self.stack_dir = stack_dir
        self.store = open_store(None, stack_dir)
        self.syncs: list[str] = []

    def current_plan(self) -> None:
        return None

    def trigger_sync(self, reason: str) -> None:
        self.syncs.append(reason)

    def is_leader(self) -> bool:
        return True


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from daemon.admin import AdminServer, admin_token
    from zsconf.engine import Engine

    tmp = tmp_path_factory.mktemp("console")
    root = make_stack(tmp / "s", SMALL)
    eng = Engine(root)
    assert eng.apply(eng.plan(), wait=True).ok
    store = eng.store
    work = tmp / "runs" / "r-tune"
    (work / "checkpoints" / "step-4").mkdir(parents=True)
    (work / "checkpoints" / "step-8").mkdir(parents=True)
    with open(work / "metrics.jsonl", "w") as f:
        for step in range(1, 11):
            rec = {
                "ts": time.time(),
                "step": step,
                "loss": 3.0 / step,
                "tokens_per_s_per_card": 1000.0 + step,
            }
            if step % 5 == 0:
                rec["validation_loss"] = 3.5 / step
            f.write(json.dumps(rec) + "\n")
        f.write('{"ts": 1, "step": 11, "lo')  # a line still being written is not a point
    (work / "runner.log").write_text("iteration 10/10 | lm loss 0.3\n")
    store.put_resource(ResourceRow(address="finetune/acme/tune", kind="finetune", tenant="acme", name="tune",
                                   spec={"description": EVIL}, status="succeeded",
                                   dependencies=["model/acme/base", "dataset/acme/faq", "tenant/acme"],
                                   outputs={"estimate": {"duration_hours": [0.01, 0.02]}}))  # fmt: skip
    store.add_run(
        RunRow(address="finetune/acme/tune", run_id="r-tune", status="succeeded", workdir=str(work))
    )
    store.put_resource(ResourceRow(address="service_group/acme/app", kind="service_group", tenant="acme",
                                   name="app", spec={"services": ["chat"]}, status="applied"))  # fmt: skip
    now = time.time()
    store.add_usage([UsageRecord(ts=now - 5, tenant="acme", group="app", key_id="ak-000000000001", model="chat",
                                 deployment="chat", prompt_tokens=3, completion_tokens=5, latency_ms=ms)
                     for ms in LATENCIES])  # fmt: skip
    store.add_usage([UsageRecord(ts=now - 5, tenant="acme", group="app", key_id="ak-000000000001", model="chat",
                                 deployment="chat", latency_ms=1.0, status=429, error_code="700004")])  # fmt: skip
    store.add_event("created", "hand-made event", "finetune/acme/tune")
    eng.close()
    view = View(root)
    server = AdminServer(view, "127.0.0.1", 0, admin_token(root)).start()
    yield {"url": server.url, "token": admin_token(root), "view": view, "root": root, "port": server.port}
    server.stop()
    view.store.close()


def _session(c: dict[str, Any]) -> httpx.Client:
    client = httpx.Client(base_url=c["url"], timeout=30)
    r = client.post("/console/login", data={"token": c["token"], "next": "/console/training"})
    assert r.status_code == 303 and r.headers["location"] == "/console/training"
    return client


def _csrf(html: str) -> str:
    import re

    return re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html).group(1)  # type: ignore[union-attr]


def test_sign_in_session_cookie_and_csrf(console: dict[str, Any]) -> None:
    anon = httpx.Client(base_url=console["url"], timeout=30)
    page = anon.get("/console/overview")
    assert (
        page.status_code == 401
        and 'name="token"' in page.text
        and "text/html" in page.headers["content-type"]
    )
    assert anon.get("/api/status").status_code == 401  # the API without a token or session, as before
    assert anon.get("/console/static/app.js").status_code == 200  # assets hold nothing secret
    wrong = anon.post("/console/login", data={"token": "nope"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    # An absolute URL as `next` is not followed off the console.
    r = anon.post("/console/login", data={"token": console["token"], "next": "https://evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    cookie = r.headers["set-cookie"]
    assert f"zsconf_session_{console['port']}=" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and console["token"] not in cookie

    s = _session(console)
    page = s.get("/console/overview")
    assert page.status_code == 200 and "finetune/acme/tune" in page.text
    assert s.get("/api/status").status_code == 200  # the pages' scripts read the API with the session
    # A change made with the cookie alone is refused: it must carry the session's CSRF token.
    assert s.post("/console/sync").status_code == 403
    assert s.post("/console/sync", headers={"x-csrf-token": "0" * 32}).status_code == 403
    ok = s.post("/console/sync", headers={"x-csrf-token": _csrf(page.text)})
    assert ok.status_code == 200 and console["view"].syncs == ["requested in the console"]
    # A forged cookie is no session.
    forged = httpx.Client(base_url=console["url"], cookies={f"zsconf_session_{console['port']}": "1.2.3"})
    assert forged.get("/console/overview").status_code == 401


def test_security_headers_and_escaping(console: dict[str, Any]) -> None:
    s = _session(console)
    page = s.get("/console/resources/finetune/acme/tune")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert EVIL not in page.text and "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page.text
    assert "<script>" not in page.text.split("</head>", 1)[1]  # no inline script anywhere in the body
    assert s.get("/console/resources/finetune/acme/nope").status_code == 404
    # Hostile input gets a clear answer, never a server error.
    csrf = {"x-csrf-token": _csrf(page.text)}
    assert s.post("/console/playground/chat", content=b"not json", headers=csrf).status_code == 400
    assert s.post("/console/playground/chat", json=[1, 2], headers=csrf).status_code == 400
    assert s.post("/console/keys/bogus", headers=csrf).status_code == 404
    bad = s.post("/console/keys/create", data={"group": "nope/nope"}, headers=csrf)
    assert bad.status_code == 200 and "no service group nope/nope" in bad.text
    assert s.get("/console/usage", params={"range": "bogus", "group": "';drop"}).status_code == 200
    assert "&lt;x&gt;" in s.get("/console/events", params={"address": "<x>"}).text


def test_usage_is_aggregated_in_sql(console: dict[str, Any]) -> None:
    from zsconf.usage import percentile

    s = _session(console)
    u = s.get("/console/data/usage", params={"range": "1h"}).json()
    assert u["totals"] == {"calls": 101, "failed": 1, "tokens_in": 300, "tokens_out": 500, "images": 0}
    ok = sorted(LATENCIES)
    bucket = next(i for i, n in enumerate(u["series"]["calls"]) if n)
    assert u["series"]["calls"][bucket] == 101 and u["series"]["failed"][bucket] == 1
    assert u["series"]["p50"][bucket] == percentile(ok, 50) and u["series"]["p99"][bucket] == percentile(
        ok, 99
    )
    assert len(u["series"]["t"]) == 61  # one point a minute over the hour
    assert [(c["code"], c["n"]) for c in u["codes"]] == [("700004", 1)]
    assert [(g["k"], g["calls"]) for g in u["by_group"]] == [("acme/app", 101)]
    # Filters narrow it; the CSV export has the same rows as `zsconf usage --csv`.
    assert s.get("/console/data/usage", params={"group": "acme/other"}).json()["totals"]["calls"] == 0
    csv = s.get("/console/usage.csv", params={"range": "1h"})
    assert csv.headers["content-type"].startswith("text/csv") and len(csv.text.strip().splitlines()) == 102


def test_metrics_series_skips_a_half_written_line(console: dict[str, Any]) -> None:
    m = _session(console).get("/console/data/metrics/r-tune").json()
    assert m["step"] == list(range(1, 11)) and m["checkpoints"] == [4, 8] and m["finished"]
    assert [v for v in m["validation_loss"] if v is not None] == [0.7, 0.35]
    assert math.isclose(m["loss"][-1], 0.3)


def _signed_in(browser: Any, console: dict[str, Any], width: int, **ctx: Any) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900}, **ctx)
    page = context.new_page()
    page.goto(f"{console['url']}/console/overview")
    page.fill("input[name=token]", console["token"])
    page.click("button[type=submit]")
    page.wait_for_selector("table.resources")
    return page


@pytest.mark.parametrize("width", [1280, 390])
def test_pages_render_in_a_browser(browser: Any, console: dict[str, Any], width: int, tmp_path: Path) -> None:
    page = _signed_in(browser, console, width)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.evaluate("window.__pwned = undefined")
    for name in PAGES:
        page.goto(f"{console['url']}/console/{name}")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(tmp_path / f"{name.replace('/', '_')}-{width}.png"), full_page=True)
        # Nothing wider than the screen: wide tables scroll inside their own box.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} at {width}px is {overflow}px wider than the screen"
    assert errors == []
    # The description holding a script is shown as text and ran nowhere.
    page.goto(f"{console['url']}/console/resources/finetune/acme/tune")
    assert EVIL in page.inner_text("p.description")
    assert page.evaluate("window.__pwned") is None
    # The training chart has one point per logged step and marks both checkpoints.
    page.goto(f"{console['url']}/console/training")
    chart = page.wait_for_selector("#loss-chart[data-points]")
    assert chart.get_attribute("data-points") == "10" and chart.get_attribute("data-checkpoints") == "2"


def test_usage_chart_follows_new_calls_and_events_arrive_live(browser: Any, console: dict[str, Any]) -> None:
    page = _signed_in(browser, console, 1280)
    page.goto(f"{console['url']}/console/usage")
    page.wait_for_selector("#usage-live[data-calls]")
    before = int(page.get_attribute("#usage-live", "data-calls") or 0)
    console["view"].store.add_usage([UsageRecord(ts=time.time(), tenant="acme", group="app", key_id="ak-000000000001",
                                                 model="chat", deployment="chat", latency_ms=20.0)])  # fmt: skip
    # Polled from here: the page's CSP forbids the eval a string predicate would need.
    deadline = time.monotonic() + 20
    while int(page.get_attribute("#usage-live", "data-calls") or 0) != before + 1:
        assert time.monotonic() < deadline, "the usage page did not show the new call"
        page.wait_for_timeout(200)
    assert page.inner_text("#total-calls").replace(",", "") == str(before + 1)

    page.goto(f"{console['url']}/console/events")
    page.wait_for_load_state("networkidle")
    console["view"].store.add_event("created", "an event while the page is open", "finetune/acme/tune")
    page.wait_for_selector("text=an event while the page is open", timeout=20_000)


def test_chinese_from_the_browser_and_switchable(browser: Any, console: dict[str, Any]) -> None:
    page = _signed_in(browser, console, 1280, locale="zh-CN")
    assert "训练任务" in page.inner_text("header nav") and "调用监控" in page.inner_text("header nav")
    page.goto(f"{console['url']}/console/overview?lang=en")
    assert "Training" in page.inner_text("header nav")
    page.goto(f"{console['url']}/console/usage")  # the choice sticks (a cookie)
    assert "Usage and monitoring" in page.inner_text("h1")


def test_a_key_created_in_the_console_is_shown_once(browser: Any, console: dict[str, Any]) -> None:
    from zsconf.keys import hash_key

    page = _signed_in(browser, console, 1280)
    page.goto(f"{console['url']}/console/keys")
    page.click("section[data-group='acme/app'] button:has-text('Create key')")
    secret = page.wait_for_selector("#new-secret").inner_text().strip()
    assert secret.startswith("zs-")
    stored = {k.key_hash: k for k in console["view"].store.api_keys("acme", "app")}
    assert hash_key(secret) in stored and stored[hash_key(secret)].revoked_at is None
    # Not kept anywhere for showing again, and in no page after this one.
    assert not list((console["root"] / ".zsconf" / "unshown-keys").glob("*.json"))
    s = _session(console)
    for name in PAGES:
        assert secret not in s.get(f"/console/{name}").text
