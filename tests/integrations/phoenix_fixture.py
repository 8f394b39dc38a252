"""A real Arize Phoenix server (`phoenix serve`) on 127.0.0.1 for the session, shared by the Phoenix tests.

Facts it relies on (measured, see ../shared/notes/phoenix.md): the server is ready when ``GET /v1/projects``
answers (~20 s on a 2-core machine); its gRPC OTLP port binds every interface whatever the host, so it gets a
free port too and spans go over OTLP/HTTP to ``{url}/v1/traces``; SIGTERM stops it (SIGINT may be ignored).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def phoenix_server(tmp_path_factory):
    """Base URL (``http://127.0.0.1:PORT``) of a real Phoenix server with an empty SQLite store."""
    if importlib.util.find_spec("phoenix.server") is None or importlib.util.find_spec("phoenix.client") is None:
        pytest.skip("arize-phoenix is not installed (pip install 'adapter-retrievers[phoenix]')")
    port, grpc_port = _free_port(), _free_port()
    while grpc_port == port:
        grpc_port = _free_port()
    path = tmp_path_factory.mktemp("phoenix-server")
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_WORKING_DIR": str(path / "work"),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = open(path / "server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "phoenix.server.main", "serve"], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/projects", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError) as exc:
                if time.time() > deadline or process.poll() is not None:
                    tail = (path / "server.log").read_text()[-3000:]
                    raise RuntimeError(f"phoenix server did not start: {tail}") from exc
            time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
