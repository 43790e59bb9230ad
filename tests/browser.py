"""Headless Chromium (Debian's `chromium` package) driven over the DevTools protocol, for tests
that look at a page as a user does: load it, type into it, click, read its text, screenshot it.
Uses aiohttp's websocket client (already installed with ray[default]): no browser driver package."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One headless Chromium with one page."""

    def __init__(self, width: int = 1400, height: int = 900) -> None:
        self.port, self.profile = _free_port(), tempfile.mkdtemp(prefix="distrl-chromium-")
        self.proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                                      "--disable-dev-shm-usage", f"--remote-debugging-port={self.port}",
                                      f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.3)
        self.loop = asyncio.new_event_loop()
        self.ids = itertools.count(1)
        self.session, self.ws = self.loop.run_until_complete(self._connect(pages[0]["webSocketDebuggerUrl"]))

    async def _connect(self, url: str):
        import aiohttp

        session = aiohttp.ClientSession()
        return session, await session.ws_connect(url, max_msg_size=0)

    async def _call(self, method: str, params: dict) -> dict:
        call_id = next(self.ids)
        await self.ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads((await self.ws.receive()).data)
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def call(self, method: str, **params) -> dict:
        return self.loop.run_until_complete(self._call(method, params))

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        result = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                           returnByValue=True)
        return result["result"].get("value", "")

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for_text(self, *needles: str, timeout: float = 120) -> str:
        deadline = time.time() + timeout
        while True:
            text = self.text()
            if all(n in text for n in needles):
                return text
            if time.time() > deadline:
                shot = tempfile.mktemp(prefix="distrl-page-", suffix=".png")
                self.screenshot(shot)
                raise AssertionError(f"page never showed {needles} (screenshot: {shot}); it shows:\n{text[-2000:]}")
            time.sleep(1.0)

    def type_text(self, text: str) -> None:
        """Types into the focused element, as a keyboard does."""
        self.call("Input.insertText", text=text)

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        self.loop.run_until_complete(self.ws.close())
        self.loop.run_until_complete(self.session.close())
        self.loop.close()
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
