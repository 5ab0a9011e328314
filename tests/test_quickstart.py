"""The quickstart end to end, the way README.md's first command runs it: `zsconf up
examples/stacks/quickstart` builds debug/tiny-qwen2, LoRA-tunes it on the bundled FAQ, compresses
it to W8A8, evaluates both, deploys the compressed model on vLLM's CPU build (installing its
engine environment first, once per user) behind the gateway, prints the key once, and keeps it
running; the openai SDK then gets the trained answers. Ctrl-C stops the daemon, the gateway and the server, and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "examples" / "stacks" / "quickstart"


def _processes_under(root: Path) -> list[str]:
    """Command lines of live processes that mention `root` or run in a folder under it (servers,
    gateway, runners, and the helper processes vLLM spawns, which mention neither)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if state != "Z" and (str(root) in argv or cwd.startswith(str(root))):
            out.append(f"{entry}: {argv}")
    return out


class Up:
    """`zsconf up quickstart` run from the stack's parent directory, as README's first command
    runs it; its output collected line by line."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [str(ZSCONF), "up", "quickstart", "--interval", "5s", *args], cwd=cwd, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env={**os.environ, "ZSCONF_GATEWAY_PORT": "0"},
        )  # fmt: skip
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line == "EOF\n" and any(x.startswith("python - <<'EOF'") for x in self.lines):
                self.ready.set()  # the banner's last line: the end of the Python snippet

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> str:
        deadline = time.monotonic() + 900
        while not self.ready.wait(0.5) and self.proc.poll() is None:
            assert time.monotonic() < deadline, self.text[-4000:]
        assert self.proc.poll() is None, f"zsconf up exited ({self.proc.returncode}):\n{self.text[-4000:]}"
        return self.text

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.text


ZSCONF = Path(sys.executable).parent / "zsconf"


def paste(script: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run what a person pastes into bash, exactly as printed, where `up` was run."""
    env = {k: v for k, v in os.environ.items() if k not in ("ZSCONF_KEY", "ZSCONF_GATEWAY_PORT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's python
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout
    )


def snippet(text: str) -> str:
    """The calls `up` printed: from the curl line to the end of the Python heredoc."""
    start = text.rindex("\ncurl ") + 1
    return text[start : text.index("\nEOF\n", start) + 5]


def banner_commands(text: str) -> list[str]:
    """The commands `up` names on its Admin API line, as printed between backticks."""
    line = next(x for x in text.splitlines() if x.startswith("Admin API:"))
    return re.findall(r"`([^`]+)`", line)


CONSOLE_PAGES = ("overview", "resources/finetune/demo/faq-lora", "training", "models", "usage", "deployments",
                 "playground", "events", "keys")  # fmt: skip


def walk_console(browser: Any, text: str, cwd: Path, key: str, gateway: str, trained: str, out: Path) -> None:
    """What a person sees in the console `up` names, checked against the stack and the state:
    every resource with the daemon's status, the spec's line, the training curve's points, usage
    that follows calls, the playground's streamed answer, a key created once that works. Each
    page is saved as a screenshot at 1280 and 390 pixels under `out`."""
    m = re.search(r"^Console:    (\S+)  \(sign in with the token in (\S+)\)$", text, re.M)
    assert m, text[-2000:]
    console, token = m.group(1).rstrip("/"), (cwd / m.group(2)).read_text().strip()
    base = console.removesuffix("/console")
    stack = cwd / "quickstart"
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{console}/overview")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_selector("table.resources")
    # Every resource of the quickstart, with the status the daemon recorded (its admin API says).
    statuses = {
        s["address"]: (s["sync"], s["health"])
        for s in page.request.get(f"{base}/api/status").json()["statuses"]
    }
    rows = {r.get_attribute("data-address"): tuple(b.inner_text() for b in r.query_selector_all(".badge"))
            for r in page.query_selector_all("table.resources tbody tr")}  # fmt: skip
    assert set(rows) == set(statuses) and len(rows) == 9 and rows == statuses, rows
    assert rows["deployment/demo/faq-chat"] == ("Synced", "Healthy")
    # The spec names the line of the file to change.
    page.goto(f"{console}/resources/finetune/demo/faq-lora")
    line = next(
        i for i, x in enumerate((stack / "stack.yaml").read_text().splitlines(), 1) if x == "    model: base"
    )
    assert page.inner_text("table.spec tr:has(code:text-is('model')) td.where") == f"stack.yaml:{line}"
    # The loss curve has a point per step the run logged.
    metrics = next(
        (stack / ".zsconf" / "artifacts" / "runs" / "demo" / "finetune" / "faq-lora").glob("*/metrics.jsonl")
    )
    steps = {json.loads(x)["step"] for x in metrics.read_text().splitlines() if '"step"' in x}
    page.goto(f"{console}/training")
    chart = page.wait_for_selector("#loss-chart[data-points]")
    assert chart.get_attribute("data-points") == str(len(steps)) and len(steps) >= 100
    # The usage page follows calls made through the gateway.
    page.goto(f"{console}/usage")
    page.wait_for_selector("#usage-live[data-calls]")
    before = int(page.get_attribute("#usage-live", "data-calls") or 0)
    assert before >= 5
    time.sleep(1.1)  # the deployment's qps 5 window
    client = openai.OpenAI(base_url=gateway, api_key=key, max_retries=0, timeout=60)
    client.chat.completions.create(model="faq-chat", messages=[{"role": "user", "content": "What is zsconf?"}],
                                   max_tokens=8)  # fmt: skip
    deadline = time.monotonic() + 30  # the gateway writes usage in batches
    while int(page.get_attribute("#usage-live", "data-calls") or 0) <= before:
        assert time.monotonic() < deadline, "the usage page did not count the call"
        page.wait_for_timeout(300)
    # The playground streams the trained answer through the gateway, with its usage.
    page.goto(f"{console}/playground")
    page.select_option("select[name=model]", "faq-chat")
    page.fill("input[name=key]", key)
    page.fill("textarea[name=prompt]", "What is zsconf?")
    page.fill("input[name=max_tokens]", "32")
    page.click("form#playground button[type=submit]")
    page.wait_for_selector("#answer[data-done=yes]", timeout=60_000)
    assert page.inner_text("#answer").strip() == trained and "completion" in page.inner_text("#answer-usage")
    # A key created in the console is shown once and works against the gateway.
    page.goto(f"{console}/keys")
    page.click("section[data-group='demo/faq-app'] button:has-text('Create key')")
    secret = page.wait_for_selector("#new-secret").inner_text().strip()
    fresh = openai.OpenAI(base_url=gateway, api_key=secret, max_retries=0, timeout=60)
    assert [x.id for x in fresh.models.list()] == ["faq-chat"]
    page.goto(f"{console}/keys")
    assert secret not in page.content()
    out.mkdir(parents=True, exist_ok=True)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        for name in CONSOLE_PAGES:
            page.goto(f"{console}/{name}")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(out / f"{name.replace('/', '_')}-{width}.png"), full_page=True)
    page.context.close()


@pytest.mark.slow
def test_zsconf_up_quickstart_answers_with_the_trained_answers(tmp_path: Path, browser: Any) -> None:
    """The newcomer's path, as a person walks it: `zsconf up`, paste each printed call, run each
    command the banner names, Ctrl-C; then `zsconf up` again (the key is not shown twice) and
    paste what it prints then."""
    stack = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, stack, ignore=shutil.ignore_patterns(".zsconf"))
    faq = [json.loads(line) for line in (stack / "data" / "faq.jsonl").read_text().splitlines() if line]
    trained = next(row["output"] for row in faq if row["instruction"] == "What is zsconf?")
    up = Up(tmp_path)
    started = time.monotonic()
    try:
        text = up.wait_ready()
        elapsed = time.monotonic() - started
        url = re.search(r"^Gateway:    (\S+)", text, re.M).group(1)  # type: ignore[union-attr]
        key = re.search(r"^API key:    (zs-\S+)  \(service_group/demo/faq-app;", text, re.M).group(1)  # type: ignore[union-attr]
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)
        answers = {}
        for row in faq[:5]:
            r = client.chat.completions.create(
                model="faq-chat",
                messages=[{"role": "user", "content": row["instruction"]}],
                max_tokens=32,
                temperature=0,
            )
            answers[row["instruction"]] = (r.choices[0].message.content or "").strip()
        right = [q for q, row in zip(answers, faq[:5], strict=True) if answers[q] == row["output"]]
        assert len(right) >= 4, f"answers after {elapsed:.0f} s: {answers}"
        # The key reached only this group's models.
        assert [m.id for m in client.models.list()] == ["faq-chat"]
        print(f"quickstart up in {elapsed:.0f} s; {len(right)}/5 trained answers")

        # Paste the printed calls: the curl's JSON and the Python's line carry the trained answer.
        time.sleep(1.1)  # the deployment's qps 5 window (1 s) is full of the calls above
        pasted = paste(snippet(text), tmp_path)
        assert pasted.returncode == 0, pasted.stderr
        curl_out, py_out = pasted.stdout.split("\n", 1)
        assert json.loads(curl_out).get("choices", [{}])[0].get("message", {}).get("content") == trained, (
            curl_out
        )
        assert py_out.strip() == trained
        # Every command the banner names works from here, as printed.
        commands = banner_commands(text)
        assert commands == ["zsconf status -C quickstart", "zsconf events -C quickstart -f",
                            "zsconf logs -C quickstart deployment/demo/faq-chat"]  # fmt: skip
        status = paste(commands[0], tmp_path)
        assert status.returncode == 0 and "deployment/demo/faq-chat" in status.stdout, status.stderr
        events = paste(f"timeout 3 {commands[1]}", tmp_path)
        assert events.returncode == 124 and "deployment/demo/faq-chat" in events.stdout, events.stderr
        logs = paste(commands[2], tmp_path)
        assert logs.returncode == 0, logs.stderr
        # A server's log shows its requests (vLLM's line: `"POST /v1/chat/completions HTTP/1.1" 200`).
        assert re.search(r"POST /v1/chat/completions( HTTP/1.1\")? 200", logs.stdout), logs.stdout[-2000:]
        assert "it/s]" not in logs.stdout and "\r" not in logs.stdout  # and no progress bars
        # The web console the banner names, in a real browser.
        walk_console(browser, text, tmp_path, key, url, trained, tmp_path / "console")
    finally:
        text = up.stop()
    assert up.proc.returncode == 0, text[-3000:]
    # What Ctrl-C says is what it does: the servers are stopped, and nothing says they keep running.
    tail = text[text.index("SIGINT") :]
    assert "the gateway and model servers are stopped next" in tail and "Stopped " in tail
    assert "keep running" not in tail.replace("jobs keep running", "")

    # A second `zsconf up`: the key is not shown again; what it prints instead works as pasted.
    again = Up(tmp_path)
    try:
        text = again.wait_ready()
        assert "API key:    zs-" not in text
        export = next(x for x in text.splitlines() if x.startswith("export ZSCONF_KEY="))
        assert (
            export
            == "export ZSCONF_KEY=$(zsconf keys create service_group/demo/faq-app -C quickstart --quiet)"
        )
        pasted = paste(export + "\n" + snippet(text), tmp_path)
        assert pasted.returncode == 0, pasted.stderr
        curl_out, py_out = pasted.stdout.split("\n", 1)
        assert json.loads(curl_out).get("choices", [{}])[0].get("message", {}).get("content") == trained, (
            curl_out
        )
        assert py_out.strip() == trained
    finally:
        again.stop()
    assert again.proc.returncode == 0
    deadline = time.monotonic() + 30
    while _processes_under(stack) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_under(stack) == []
