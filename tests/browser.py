"""Open a report in headless Chromium as a person would, through the DevTools protocol.

`check_page` loads a local HTML file offline and returns what a reader would meet: every
figure with its rendered size, every console error or uncaught exception, and optionally a
full-page screenshot. Test support, not part of the package: the report tests use it, and so
does benchmarks/build_report.py to keep a screenshot beside docs/report.html. Needs Chromium
(Debian's `chromium` package) and the `websockets` client (the dev extra).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
)

# Runs in the page: each figure's natural and rendered size, and whether it decoded.
FIGURE_PROBE = """
JSON.stringify(Array.from(document.querySelectorAll("img.figure, svg.figure")).map(function (e) {
  var r = e.getBoundingClientRect();
  var s = e.closest("section");
  return {section: e.dataset.section || (s ? s.id : ""), width: r.width,
          height: r.height, natural_width: e.naturalWidth || 0,
          complete: e.complete === undefined ? true : e.complete};
}))
"""


@dataclass
class PageCheck:
    title: str
    figures: list[dict[str, Any]]
    console_errors: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def empty_figures(self) -> list[dict[str, Any]]:
        return [
            f
            for f in self.figures
            if not f["complete"] or f["width"] <= 0 or f["height"] <= 0 or f["natural_width"] <= 0
        ]


def find_chromium() -> str | None:
    """INFERMETER_CHROMIUM, else the first Chromium/Chrome on PATH or in /usr/bin."""
    given = os.environ.get("INFERMETER_CHROMIUM")
    if given:
        return given if Path(given).exists() else None
    for name in CANDIDATES:
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if found:
            return found
    return None


class _DevTools:
    """A minimal DevTools client: numbered commands, events kept until asked for."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {method} within {timeout} s")
            self.events.append(json.loads(self.ws.recv(timeout=remaining)))


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(
                " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
                )
            )
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            out.append(params["entry"].get("text", ""))
    return out


def _launch(chromium: str, profile: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its helpers share the group, so _stop reaches them all
    )
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if match:
            return proc, int(match.group(1))
    _stop(proc)
    raise RuntimeError(f"{chromium} did not start its DevTools endpoint")


def check_page(
    page: str | Path,
    screenshot: str | Path | None = None,
    width: int = 1280,
    chromium: str | None = None,
    settle_s: float = 0.5,
) -> PageCheck:
    """Load `page` (a local file) in headless Chromium and report what it shows."""
    binary = chromium or find_chromium()
    if binary is None:
        raise RuntimeError(
            "Chromium not found: apt-get install chromium (or set INFERMETER_CHROMIUM)"
        )
    url = Path(page).resolve().as_uri()
    # Ignore cleanup errors: a helper that outlives the group's stop may still write there.
    with tempfile.TemporaryDirectory(
        prefix="infermeter-chromium-", ignore_cleanup_errors=True
    ) as profile:
        proc, port = _launch(binary, profile)
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT"
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                target = json.loads(response.read())
            from websockets.sync.client import connect

            with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
                return _inspect(_DevTools(ws), url, screenshot, width, settle_s)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop Chromium, then whatever is left of its process group (helpers outlive it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stderr:
        proc.stderr.close()


def _inspect(
    tools: _DevTools, url: str, screenshot: str | Path | None, width: int, settle_s: float
) -> PageCheck:
    for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
        tools.call(domain)
    tools.call(
        "Emulation.setDeviceMetricsOverride",
        width=width,
        height=900,
        deviceScaleFactor=1,
        mobile=False,
    )
    tools.call("Page.navigate", url=url)
    tools.wait_for("Page.loadEventFired")
    time.sleep(settle_s)  # late console messages, image decoding

    def evaluate(expression: str) -> Any:
        result = tools.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    check = PageCheck(
        title=evaluate("document.title") or "",
        figures=json.loads(evaluate(FIGURE_PROBE) or "[]"),
        sections=json.loads(
            evaluate(
                'JSON.stringify(Array.from(document.querySelectorAll("section")).map(s => s.id))'
            )
            or "[]"
        ),
    )
    if screenshot is not None:
        metrics = tools.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        height = int(min(size["height"], 16000))  # Chromium's texture limit
        shot = tools.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        )
        path = Path(screenshot)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        check.screenshot = path
    check.console_errors = _errors(tools.events)
    return check
