"""The `browser` fixture drives a real Chromium: scripts run, a strict CSP holds, viewports and screenshots work.

The console pages are tested the same way, so this fails first and plainly when the browser setup is broken.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser

# The console's policy: scripts from its own origin only, so an inline <script> must not run.
CSP = "script-src 'self'"
PAGES: dict[str, tuple[str, str]] = {
    "/": (
        "text/html; charset=utf-8",
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'><title>untouched</title>"
        "<script src='/app.js'></script>"
        "<script>window.__inline = 1;</script></head>"
        "<body><h1>配置控制台</h1><p>zsconf smoke page</p></body></html>",
    ),
    # Listens for the violation before the inline script is parsed, so the test sees CSP blocked it.
    "/app.js": (
        "text/javascript; charset=utf-8",
        "document.title = 'external ran';\n"
        "window.__violations = [];\n"
        "document.addEventListener('securitypolicyviolation',"
        " (e) => window.__violations.push(e.effectiveDirective));\n",
    ),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path not in PAGES:
            self.send_error(404)
            return
        content_type, body = PAGES[self.path]
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest's output to the test's own


@contextmanager
def _serve() -> Iterator[str]:
    """The pages on 127.0.0.1 at a free port (tests run side by side)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_chromium_runs_scripts_enforces_csp_and_screenshots(browser: Browser, tmp_path: Path) -> None:
    with _serve() as url:
        page = browser.new_page()
        try:
            page.goto(url)
            assert page.title() == "external ran"
            page.wait_for_function("window.__violations.length > 0", timeout=3000)
            assert page.evaluate("window.__violations") == ["script-src-elem"]
            assert page.evaluate("typeof window.__inline") == "undefined"
            shot = tmp_path / "smoke.png"
            page.screenshot(path=shot)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            page.close()

        # The console's two layouts: a phone and a laptop.
        for width, height in [(390, 844), (1280, 800)]:
            context = browser.new_context(viewport={"width": width, "height": height})
            try:
                page = context.new_page()
                page.goto(url)
                assert page.evaluate("[window.innerWidth, window.innerHeight]") == [width, height]
                assert page.title() == "external ran"
                page.screenshot(path=tmp_path / f"smoke-{width}x{height}.png")
            finally:
                context.close()
