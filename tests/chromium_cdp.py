"""Drive a real headless Chromium over the Chrome DevTools Protocol (tests only).

A fresh profile, no network features, ``--remote-debugging-port=0`` (Chromium picks a free
port and writes it to ``DevToolsActivePort`` in the profile), and one websocket
(``websockets``' sync client). ``open_page`` records everything that tells whether a page
is healthy: console messages, uncaught exceptions, browser log entries (CSP violations,
failed loads), every network request and every failure, and JavaScript dialogs
(``alert()``), which are dismissed so a hostile page cannot hang the test.
"""
from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--no-default-browser-check", "--disable-extensions",
    "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--remote-debugging-port=0",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageLog:
    url: str
    console: list[dict] = field(default_factory=list)      # Runtime.consoleAPICalled
    exceptions: list[dict] = field(default_factory=list)   # Runtime.exceptionThrown
    log_entries: list[dict] = field(default_factory=list)  # Log.entryAdded
    requests: list[str] = field(default_factory=list)      # every URL requested
    failed: list[dict] = field(default_factory=list)       # Network.loadingFailed, HTTP >= 400
    dialogs: list[dict] = field(default_factory=list)      # alert/confirm/prompt opened

    def errors(self) -> list[str]:
        """Console errors, exceptions and error-level log entries, as readable lines."""
        out = [f"console.{c['type']}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in c.get("args", []))
               for c in self.console if c.get("type") in ("error", "assert")]
        out += [f"exception: {e.get('exceptionDetails', {}).get('text')} "
                f"{e.get('exceptionDetails', {}).get('exception', {}).get('description', '')}" for e in self.exceptions]
        out += [f"log {e['entry'].get('source')}: {e['entry'].get('text')}" for e in self.log_entries
                if e["entry"].get("level") == "error"]
        return out


class Chromium:
    def __init__(self, binary: str, profile_dir: Path, timeout: float = 60.0):
        from websockets.sync.client import connect

        self.timeout = timeout
        profile_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: {self.proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        # proxy=None: never route the loopback DevTools socket through an http(s)_proxy from the environment
        self._ws_cm = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=timeout, proxy=None,
                              ping_interval=None, compression=None)
        self.ws = self._ws_cm.__enter__()
        self._ids = itertools.count(1)
        self._handlers: list = []

    # -- protocol ------------------------------------------------------------
    def _dispatch(self, msg: dict) -> None:
        for handler in self._handlers:
            handler(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, wait: bool = True) -> dict:
        mid = next(self._ids)
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        if not wait:
            return {}
        deadline = time.monotonic() + self.timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if reply.get("id") == mid:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._dispatch(reply)

    def pump(self, until, timeout: float | None = None) -> None:
        """Read events until ``until()`` is true."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("page did not finish loading")
            try:
                self._dispatch(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                raise TimeoutError("page did not finish loading") from None

    # -- pages ---------------------------------------------------------------
    def open_page(self, url: str, width: int = 1280, height: int = 900, settle_s: float = 0.5) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        log = PageLog(url=url)
        state = {"loaded": False}

        def on(msg: dict) -> None:
            if msg.get("sessionId") != session:
                return
            m, p = msg.get("method"), msg.get("params", {})
            if m == "Runtime.consoleAPICalled":
                log.console.append(p)
            elif m == "Runtime.exceptionThrown":
                log.exceptions.append(p)
            elif m == "Log.entryAdded":
                log.log_entries.append(p)
            elif m == "Network.requestWillBeSent":
                log.requests.append(p["request"]["url"])
            elif m == "Network.loadingFailed":
                log.failed.append(p)
            elif m == "Network.responseReceived" and p["response"].get("status", 0) >= 400:
                log.failed.append(p)
            elif m == "Page.javascriptDialogOpening":
                log.dialogs.append(p)
                self.send("Page.handleJavaScriptDialog", {"accept": False}, session=session, wait=False)
            elif m == "Page.loadEventFired":
                state["loaded"] = True

        self._handlers.append(on)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.pump(lambda: state["loaded"])
        end = time.monotonic() + settle_s  # late console messages, dialogs fired after load
        while time.monotonic() < end:
            try:
                self._dispatch(json.loads(self.ws.recv(timeout=max(end - time.monotonic(), 0.01))))
            except TimeoutError:
                break
        return Page(self, session, target, log)

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                try:
                    self.send("Browser.close", wait=False)
                except Exception:
                    pass
                self._ws_cm.__exit__(None, None, None)
        finally:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Page:
    browser: Chromium
    session: str
    target: str
    log: PageLog

    def eval(self, expression: str) -> Any:
        res = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                     "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluate failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: Path, max_height: int = 16000) -> Path:
        metrics = self.browser.send("Page.getLayoutMetrics", session=self.session)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], max_height), "scale": 1}
        data = self.browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip},
                                 session=self.session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})
