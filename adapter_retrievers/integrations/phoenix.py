"""A local Arize Phoenix server and OpenInference tracing of a LangChain app into it.

:func:`local_phoenix` starts ``phoenix serve`` on 127.0.0.1 with free ports and a throwaway working dir
(SQLite) and stops it on exit: what the tests, the drift benchmark and the ``nightly_refresh`` notebook
trace into. :func:`instrument_langchain` instruments LangChain with OpenInference's instrumentor into any
span exporter, and :func:`trace_langchain` into one Phoenix project over OTLP/HTTP; :func:`wait_for_spans`
waits until Phoenix has stored them (to annotate them). Needs ``pip install 'adapter-retrievers[phoenix]'``.

Facts this relies on (measured with Phoenix 20): the server is ready when ``GET /v1/projects`` answers
(~20 s on a 2-core machine); its gRPC OTLP port binds every interface whatever the host, so it gets a
free port too and spans go over OTLP/HTTP to ``{url}/v1/traces``; SIGTERM stops it (SIGINT may be
ignored when it runs in the background).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any


def phoenix_installed() -> bool:
    """True when the Phoenix server and client can be imported (the ``phoenix`` extra)."""
    return importlib.util.find_spec("phoenix.server") is not None and importlib.util.find_spec("phoenix.client")


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


@contextlib.contextmanager
def local_phoenix(working_dir: os.PathLike | str | None = None, timeout: float = 180.0) -> Iterator[str]:
    """Run ``phoenix serve`` on 127.0.0.1 (free HTTP and gRPC ports, SQLite in ``working_dir`` or a temporary
    folder) for the duration of the ``with`` block; yields its base URL ``http://127.0.0.1:PORT``.

    Raises ``ImportError`` without the ``phoenix`` extra and ``RuntimeError`` (with the end of the server's
    log) when it does not answer within ``timeout`` seconds.
    """
    if not phoenix_installed():
        raise ImportError("a local Phoenix server needs: pip install 'adapter-retrievers[phoenix]'")
    with contextlib.ExitStack() as stack:
        folder = Path(working_dir) if working_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        port = _free_port(set())
        grpc_port = _free_port({port})
        env = {
            **os.environ,
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(port),
            "PHOENIX_GRPC_PORT": str(grpc_port),
            "PHOENIX_WORKING_DIR": str(folder / "work"),
            "PHOENIX_TELEMETRY_ENABLED": "false",
        }
        log_path = folder / "server.log"
        log = stack.enter_context(open(log_path, "w"))
        process = subprocess.Popen(
            [sys.executable, "-m", "phoenix.server.main", "serve"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/v1/projects", timeout=2) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, OSError) as exc:
                    if time.time() > deadline or process.poll() is not None:
                        raise RuntimeError(f"phoenix server did not start: {log_path.read_text()[-3000:]}") from exc
                time.sleep(0.5)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class _ShiftedClock:
    """Wraps a span exporter: moves every span's times by ``offset()`` nanoseconds before export.

    For replaying simulated days in minutes: the spans carry the simulated day's time, as the capture log does.
    """

    def __init__(self, exporter: Any, offset: Callable[[], int]) -> None:
        self.exporter, self.offset = exporter, offset

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace import Event

        shift = self.offset()
        if shift:
            for span in spans:
                span._start_time += shift
                span._end_time += shift
                span._events = tuple(Event(e.name, e.attributes, e.timestamp + shift) for e in span.events)
        return self.exporter.export(spans)

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


@contextlib.contextmanager
def instrument_langchain(exporter: Any, project: str | None = None) -> Iterator[Any]:
    """Send the spans of every LangChain run in the block to ``exporter`` (OpenInference instrumentor, one
    export per span so each span is sent when it ends), under OpenInference project ``project`` when given;
    yields the tracer provider, which is shut down on exit."""
    from openinference.instrumentation.langchain import LangChainInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    resource = Resource.create({"openinference.project.name": project} if project else {})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


@contextlib.contextmanager
def trace_langchain(url: str, project: str, clock_offset_ns: Callable[[], int] | None = None) -> Iterator[Any]:
    """Trace every LangChain run in the block to Phoenix project ``project`` (OTLP/HTTP, through
    :func:`instrument_langchain`); yields the tracer provider.

    ``clock_offset_ns``: for simulations, nanoseconds added to every span's times when it is exported.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces")
    if clock_offset_ns is not None:
        exporter = _ShiftedClock(exporter, clock_offset_ns)
    with instrument_langchain(exporter, project) as provider:
        yield provider


def wait_for_spans(
    url: str,
    project: str,
    count: int,
    start_time: datetime | None = None,
    span_kind: str = "RETRIEVER",
    timeout: float = 120.0,
) -> list[dict]:
    """The project's spans of ``span_kind`` started since ``start_time``, once Phoenix has stored at least
    ``count`` of them (ingestion is asynchronous; annotating a span not stored yet answers 404).

    Raises ``TimeoutError`` when fewer are stored after ``timeout`` seconds.
    """
    import httpx
    from phoenix.client import Client

    client = Client(base_url=url)
    deadline = time.time() + timeout
    while True:
        try:
            spans = client.spans.get_spans(
                project_identifier=project, start_time=start_time, span_kind=span_kind, limit=max(count, 1) * 2 + 100
            )
        except httpx.HTTPStatusError as exc:  # the project exists only once its first span is stored (404 before)
            if exc.response.status_code != 404:
                raise
            spans = []
        except httpx.TimeoutException:  # a server busy ingesting answers late: ask again until the deadline
            spans = []
        if len(spans) >= count:
            return spans
        if time.time() > deadline:
            raise TimeoutError(f"Phoenix stored {len(spans)} of {count} {span_kind} spans of project {project!r}")
        time.sleep(0.5)
