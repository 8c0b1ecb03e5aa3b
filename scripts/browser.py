#!/usr/bin/env python3
"""Drives headless Chromium through the DevTools protocol over --remote-debugging-pipe (no
WebSocket needed): open a URL, then run steps in order. Used by the dashboard's browser tests and
by scripts/dashboard-screenshot.sh.

  browser.py [--size 1600x1000] [--timeout S] [--dark] [--full] URL STEP...

Steps:
  wait:<js>         until the expression is truthy (each step times out after --timeout seconds)
  eval:<js>         print the value as one JSON line
  click:<css>       a real mouse click (press and release) at the centre of the first match
  sleep:<ms>
  screenshot:<path> the viewport as PNG (--full: the whole page)

Exits 0 when every step ran, 1 with one line on stderr naming the step that failed.
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


class Browser:
    def __init__(self, size, chromium):
        self.profile = tempfile.mkdtemp(prefix="pml-chromium-")
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()

        def fds():
            # Chromium reads commands on fd 3 and writes answers on fd 4. Both ends go out of the
            # way first, in case either already is fd 3 or 4.
            import fcntl
            r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}", f"--window-size={size}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=fds, pass_fds=(3, 4))
        os.close(to_child_r)
        os.close(from_child_w)
        self.buffer = b""
        self.next_id = 0
        self.session = None

    def send(self, method, params=None, session=True, timeout=20):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            for reply in self.messages(deadline):
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                    return reply.get("result", {})

    def messages(self, deadline):
        import select
        while b"\0" not in self.buffer:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self.from_child], [], [], left)
            if ready:
                chunk = os.read(self.from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self.buffer += chunk
        out = []
        while b"\0" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\0", 1)
            out.append(json.loads(raw))
        return out

    def attach(self):
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")

    def evaluate(self, expression):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"].get("exception", {}).get("description") or r["exceptionDetails"].get("text"))
        return r.get("result", {}).get("value")

    def close(self):
        try:
            self.send("Browser.close", session=False, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def main(argv):
    size, timeout, full, dark = "1600,1000", 15.0, False, False
    args = argv[1:]
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag == "--size":
            size = args.pop(0).replace("x", ",")
        elif flag == "--timeout":
            timeout = float(args.pop(0))
        elif flag == "--full":
            full = True
        elif flag == "--dark":
            dark = True
        else:
            sys.exit(f"browser.py: unknown flag {flag}")
    if not args:
        sys.exit(__doc__)
    url, steps = args[0], args[1:]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        sys.exit("browser.py: no chromium on PATH (scripts/setup.sh installs it)")
    browser = Browser(size, chromium)
    step = "open " + url
    try:
        browser.attach()
        if dark:
            browser.send("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        browser.send("Page.navigate", {"url": url})
        for step in steps:
            kind, _, arg = step.partition(":")
            if kind == "wait":
                deadline = time.time() + timeout
                while not browser.evaluate("Boolean(%s)" % arg):
                    if time.time() > deadline:
                        raise TimeoutError(f"not true within {timeout} s")
                    time.sleep(0.1)
            elif kind == "eval":
                print(json.dumps(browser.evaluate(arg), separators=(",", ":")), flush=True)
            elif kind == "click":
                box = browser.evaluate(
                    "(() => { const e = document.querySelector(%s); if (!e) return null; e.scrollIntoView({block: 'center'});"
                    " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()" % json.dumps(arg))
                if not box:
                    raise RuntimeError("no element matches")
                for event in ("mouseMoved", "mousePressed", "mouseReleased"):
                    browser.send("Input.dispatchMouseEvent", {"type": event, "x": box[0], "y": box[1], "button": "left", "clickCount": 1})
            elif kind == "sleep":
                time.sleep(float(arg) / 1000)
            elif kind == "screenshot":
                params = {"format": "png"}
                if full:
                    params["captureBeyondViewport"] = True
                data = browser.send("Page.captureScreenshot", params, timeout=30)["data"]
                with open(arg, "wb") as f:
                    f.write(base64.b64decode(data))
            else:
                raise RuntimeError("unknown step")
    except Exception as e:  # one line, naming the step
        print(f"browser.py: step {step!r}: {e}", file=sys.stderr)
        return 1
    finally:
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
