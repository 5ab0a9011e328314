"""The quickstart end to end, the way README.md's first command runs it: `zsconf up
examples/stacks/quickstart` builds debug/tiny-qwen2, LoRA-tunes it on the bundled FAQ, compresses
it to W8A8, evaluates both, deploys the compressed model on the embedded engine behind the
gateway, prints the key once, and keeps it running; the openai SDK then gets the trained answers.
Ctrl-C stops the daemon, the gateway and the server, and leaves no process behind.
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

import openai
import pytest

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "examples" / "stacks" / "quickstart"


def _processes_under(root: Path) -> list[str]:
    """Command lines of live processes that mention `root` (servers, gateway, runners)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and str(root) in argv:
            out.append(f"{entry}: {argv}")
    return out


@pytest.mark.slow
def test_zsconf_up_quickstart_answers_with_the_trained_answers(tmp_path: Path) -> None:
    stack = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, stack, ignore=shutil.ignore_patterns(".zsconf"))
    faq = [json.loads(line) for line in (stack / "data" / "faq.jsonl").read_text().splitlines() if line]
    zsconf = Path(sys.executable).parent / "zsconf"
    proc = subprocess.Popen(
        [str(zsconf), "up", str(stack), "--interval", "5s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "ZSCONF_GATEWAY_PORT": "0"},
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("API key:    "):  # the banner's last line before the snippets
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    started = time.monotonic()
    try:
        assert ready.wait(900) or proc.poll() is not None, "".join(lines[-40:])
        assert proc.poll() is None, "".join(lines[-40:])
        elapsed = time.monotonic() - started
        text = "".join(lines)
        url = re.search(r"^Gateway:    (\S+)", text, re.M).group(1)  # type: ignore[union-attr]
        key = re.search(r"^API key:    (zs-\S+)  \(service_group/demo/faq-app;", text, re.M).group(1)  # type: ignore[union-attr]
        assert text.count(key) >= 1 and "curl " + url in text
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
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, "".join(lines[-30:])
    deadline = time.monotonic() + 30
    while _processes_under(stack) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_under(stack) == []
