"""Helpers for the serve tests: the bundled digits as class folders, a real server on a free
loopback port (``python -m netforge serve`` in a subprocess, or uvicorn in a thread), and a
small HTTP client on urllib (JSON, forms, multipart, server-sent events)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DIGITS_CSV = ROOT / "tests" / "data" / "mnist_4k.csv.gz"


def mnist_tool():
    """tools/mnist_to_folders.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("mnist_to_folders",
                                                  ROOT / "tools" / "mnist_to_folders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_digits(out: Path, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """``out/<digit>/<i>.png`` for the first ``per_class`` digits of each class (the CSV is
    sorted by label, so its first rows are all zeros); returns (images, labels) written."""
    tool = mnist_tool()
    images, labels = tool.read_mnist_csv(DIGITS_CSV)
    chosen = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(10)])
    tool.write_folders(images[chosen], labels[chosen], out)
    return images[chosen], labels[chosen]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    def __init__(self, base: str, token: str | None = None):
        self.base = base.rstrip("/")
        self.token = token

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, timeout: float = 120) -> tuple[int, bytes, dict]:
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=body, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def json(self, method: str, path: str, fields: dict | None = None,
             files: dict | None = None, expect: int | None = 200):
        if files:
            body, kind = multipart(fields or {}, files)
        elif fields is not None:
            body, kind = urllib.parse.urlencode(fields).encode(), \
                "application/x-www-form-urlencoded"
        else:
            body, kind = None, None
        status, data, _ = self.request(method, path, body,
                                       {"Content-Type": kind} if kind else None)
        decoded = json.loads(data) if data else None
        if expect is not None:
            assert status == expect, (status, decoded)
        return decoded if expect is not None else (status, decoded)

    def events(self, path: str, on_event=None, timeout: float = 300) -> list[tuple[str, dict]]:
        """Read a server-sent event stream to its ``end`` event; ``on_event(name, data)`` is
        called as each one arrives."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        req = urllib.request.Request(self.base + path, headers=headers)
        received, name, data = [], "message", []
        with urllib.request.urlopen(req, timeout=timeout) as stream:
            for raw in stream:
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line:
                    if data:
                        event = (name, json.loads("\n".join(data)))
                        received.append(event)
                        if on_event is not None:
                            on_event(*event)
                        if name == "end":
                            return received
                    name, data = "message", []
        return received


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """A multipart/form-data body; ``files`` maps a field to [(file name, bytes)]."""
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
                     f"{value}\r\n".encode())
    for key, items in files.items():
        for filename, data in items:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; '
                         f'filename="{filename}"\r\nContent-Type: application/octet-stream'
                         "\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def wait_until(check, timeout: float = 120, every: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class ServerProcess:
    """``python -m netforge serve`` on a free loopback port, stopped with SIGTERM (as a
    service manager or Ctrl-C would)."""

    def __init__(self, workspace: Path, *extra: str):
        self.workspace = workspace
        self.extra = extra
        self.proc = None
        self.port = None
        self.client = None

    def start(self) -> Client:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log = open(self.workspace.parent / f"server-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netforge", "serve", "--port", str(self.port),
             "--workspace", str(self.workspace), *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        client = self.client = Client(f"http://127.0.0.1:{self.port}")

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}")
            try:
                return client.request("GET", "/api/health", timeout=2)[0] == 200
            except OSError:
                return False

        wait_until(up, 60, what="the server to answer")
        return client

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash (its jobs live on)."""
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        self.proc = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        self.proc = None
        return code


class ThreadServer:
    """uvicorn serving ``app`` in a thread of the test process (for quick refusal tests)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Client:
        self.thread.start()
        wait_until(lambda: self.server.started, 30, 0.05, "uvicorn to start")
        return Client(f"http://127.0.0.1:{self.port}")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
