"""Pull retriever spans, their annotations and their document annotations from an Arize Phoenix server.

Phoenix's client gives spans and span annotations, but document annotations (the per-document relevance that
makes a positive pair) only through Phoenix's GraphQL API. :func:`iter_phoenix_records` gets all three, page by
page, as records that ``harvest(..., fmt="openinference")`` reads; :func:`export_phoenix` writes them to a
JSONL file (CLI: ``adapter-retrievers export-phoenix``). What is pulled:

- RETRIEVER spans started at or after ``since`` (oldest first, ``page_size`` per request), as
  ``client.spans.get_spans`` returns them;
- span annotations on those spans (``user_feedback`` thumbs up/down, ...), as ``get_span_annotations`` returns
  them;
- span annotations on the root span of their traces (where apps usually attach answer feedback) and trace
  annotations, written with a ``trace_id`` so harvest applies them to the trace's retrievals;
- document annotations on those spans (``relevance`` at a document position), from GraphQL, in the shape
  ``log_document_annotations`` takes (``span_id``, ``document_position``, ``name``, ``result``).

Other spans (chains, LLM calls) are not pulled: they hold no retrieval. Annotations written after an export on
spans it already covered are picked up only by a later export that covers those spans again: incremental
callers pass ``since`` = the previous watermark minus the time users take to give feedback.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adapter_retrievers._files import atomic_writer

# Phoenix refuses a GraphQL query with more than 50 aliases ("60 aliases found. Allowed: 50"): one alias per span
GRAPHQL_ALIASES = 50
_DOCUMENT_FIELDS = "spanId documentEvaluations { name label score explanation documentPosition annotatorKind metadata }"


@dataclass
class PhoenixExport:
    """What an export pulled; ``watermark`` is the newest span start time seen (pass it as ``since`` next time)."""

    retriever_spans: int = 0
    span_annotations: int = 0
    trace_annotations: int = 0  # on a trace or on its root span: answer-level feedback
    document_annotations: int = 0
    pages: int = 0
    watermark: datetime | None = None

    @property
    def records(self) -> int:
        return self.retriever_spans + self.span_annotations + self.trace_annotations + self.document_annotations

    def __str__(self) -> str:
        newest = self.watermark.isoformat() if self.watermark else "none"
        return (
            f"{self.records} records: {self.retriever_spans} retriever spans, {self.span_annotations} span "
            f"annotations, {self.trace_annotations} trace/root-span annotations, {self.document_annotations} "
            f"document annotations ({self.pages} pages; newest span started {newest})"
        )


def _when(value: datetime | str | None, name: str = "since") -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} {value!r}: not an ISO 8601 time (like 2026-11-27 or 2026-11-27T03:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


DEFAULT_URL = "http://localhost:6006"
_OPTION_NAMES = {"url": "url", "since": "since", "until": "until", "page_size": "page_size"}


def check_options(
    url: str | None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    page_size: int = 500,
    names: dict[str, str] | None = None,
) -> tuple[str, datetime | None, datetime | None]:
    """``(url, since, until)`` checked and parsed before anything connects; ``names``: how the caller calls
    each option in messages (the CLI: ``{"page_size": "--page-size", ...}``)."""
    named = {**_OPTION_NAMES, **(names or {})}
    url = url or os.environ.get("PHOENIX_COLLECTOR_ENDPOINT") or DEFAULT_URL
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{named['url']} {url!r}: not an http(s) URL (like {DEFAULT_URL})")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 1000:
        raise ValueError(f"{named['page_size']} must be 1..1000 (Phoenix's limit), got {page_size}")
    start, end = _when(since, named["since"]), _when(until, named["until"])
    if start is not None and end is not None and end <= start:
        raise ValueError(f"{named['until']} must be after {named['since']}")
    return url, start, end


def check_reachable(url: str, name: str = "url", timeout: float = 3.0) -> None:
    """Refuse at once a URL where no server listens (one TCP connect; no HTTP, no Phoenix client import), so
    that an export from a server that is not running fails in a moment, not after seconds of client start-up.

    Skipped when a proxy is configured for the URL (the proxy, not this machine, reaches the server).
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host or (urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(host)):
        return
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConnectionError(f"{name} {url}: no server answers there ({reason}); is Phoenix running?") from None


@dataclass
class _Phoenix:
    """The few Phoenix endpoints an export needs, on one HTTP connection (auth headers as Phoenix's client)."""

    url: str
    project: str
    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 60.0

    def __post_init__(self) -> None:
        try:
            import httpx
            from phoenix.client import Client
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("export from Phoenix needs: pip install 'adapter-retrievers[phoenix]'") from exc
        headers = dict(self.headers)
        key = self.api_key or os.environ.get("PHOENIX_API_KEY")
        if key:
            headers.setdefault("Authorization", f"Bearer {key}")
        self.path = urllib.parse.quote(self.project, safe="")  # a project name or id, in a URL path
        self.http_errors = (httpx.HTTPError,)
        self.http = httpx.Client(base_url=self.url.rstrip("/"), headers=headers, timeout=self.timeout)
        self.client = Client(http_client=self.http)

    def span_pages(self, since: datetime | None, until: datetime | None, page_size: int, **filters: Any):
        """Pages of spans, oldest first (cursor paging of ``GET /v1/projects/{project}/spans``)."""
        params: dict[str, Any] = {"limit": page_size, "sort": "start_time", "order": "asc", **filters}
        if since is not None:
            params["start_time"] = since.isoformat()
        if until is not None:
            params["end_time"] = until.isoformat()
        cursor = None
        while True:
            response = self.http.get(
                f"/v1/projects/{self.path}/spans", params={**params, **({"cursor": cursor} if cursor else {})}
            )
            if response.status_code == 404:  # a project exists only once its first span is stored
                return
            response.raise_for_status()
            body = response.json()
            if body.get("data"):
                yield body["data"]
            cursor = body.get("next_cursor")
            if not cursor or not body.get("data"):
                return

    def span_annotations(self, span_ids: list[str]) -> list[dict]:
        if not span_ids:
            return []
        return list(self.client.spans.get_span_annotations(span_ids=span_ids, project_identifier=self.project))

    def trace_annotations(self, trace_ids: list[str]) -> list[dict]:
        out: list[dict] = []
        for start in range(0, len(trace_ids), 100):
            cursor = None
            while True:
                params: dict[str, Any] = {"trace_ids": trace_ids[start : start + 100], "limit": 1000}
                if cursor:
                    params["cursor"] = cursor
                response = self.http.get(f"/v1/projects/{self.path}/trace_annotations", params=params)
                if response.status_code == 404:
                    break
                response.raise_for_status()
                body = response.json()
                out.extend(body.get("data") or [])
                cursor = body.get("next_cursor")
                if not cursor:
                    break
        return out

    def document_annotations(self, node_ids: list[str]) -> list[dict]:
        """Document annotations of spans (by GraphQL node id), in ``log_document_annotations``' shape."""
        out = []
        for start in range(0, len(node_ids), GRAPHQL_ALIASES):
            chunk = node_ids[start : start + GRAPHQL_ALIASES]
            query = "query {" + "".join(
                f' s{i}: node(id: "{n}") {{ ... on Span {{ {_DOCUMENT_FIELDS} }} }}' for i, n in enumerate(chunk)
            )
            response = self.http.post("/graphql", json={"query": query + " }"})
            response.raise_for_status()
            body = response.json()
            if body.get("errors"):
                raise RuntimeError(f"Phoenix GraphQL error: {body['errors'][0].get('message')}")
            for node in (body.get("data") or {}).values():
                for note in (node or {}).get("documentEvaluations") or []:
                    out.append(
                        {
                            "span_id": node["spanId"],
                            "document_position": note.get("documentPosition"),
                            "name": note.get("name"),
                            "annotator_kind": note.get("annotatorKind"),
                            "result": {
                                "label": note.get("label"),
                                "score": note.get("score"),
                                "explanation": note.get("explanation"),
                            },
                            "metadata": note.get("metadata") or {},
                        }
                    )
        return out

    def close(self) -> None:
        self.http.close()


def iter_phoenix_records(
    url: str | None = None,
    project: str = "default",
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    page_size: int = 500,
    api_key: str | None = None,
    headers: dict[str, str] | None = None,
    stats: PhoenixExport | None = None,
) -> Iterator[dict]:
    """Yield retriever spans and the annotations on them from a Phoenix server, page by page, oldest first.

    Every record is one ``harvest(..., fmt="openinference")`` reads. Pass a :class:`PhoenixExport` as
    ``stats`` to get counts and the watermark (newest span start seen) while streaming; memory stays
    bounded by one page. ``url`` defaults to ``PHOENIX_COLLECTOR_ENDPOINT`` or ``http://localhost:6006``.
    """
    url, start, end = check_options(url, since, until, page_size)
    check_reachable(url)
    stats = stats if stats is not None else PhoenixExport()
    phoenix = _Phoenix(url, project, api_key, dict(headers or {}))
    traces_done: set[str] = set()
    try:
        for page in phoenix.span_pages(start, end, page_size, span_kind="RETRIEVER"):
            stats.pages += 1
            for span in page:
                stats.retriever_spans += 1
                started = _when(span.get("start_time"))
                if started and (stats.watermark is None or started > stats.watermark):
                    stats.watermark = started
                yield span
            span_ids = [s["context"]["span_id"] for s in page]
            for note in phoenix.span_annotations(span_ids):
                stats.span_annotations += 1
                yield note
            for note in phoenix.document_annotations([s["id"] for s in page if s.get("id")]):
                stats.document_annotations += 1
                yield note
            # answer feedback is usually put on the trace or its root span: it concerns the trace's retrievals
            trace_ids = sorted({s["context"]["trace_id"] for s in page} - {None} - traces_done)
            traces_done.update(trace_ids)  # a trace whose retrievals span two pages is asked about once
            own = set(span_ids)
            roots = {}
            for start in range(0, len(trace_ids), 100):
                for root_page in phoenix.span_pages(
                    None, None, 1000, trace_id=trace_ids[start : start + 100], parent_id="null"
                ):
                    roots.update({s["context"]["span_id"]: s["context"]["trace_id"] for s in root_page})
            for note in phoenix.span_annotations([s for s in roots if s not in own]):
                stats.trace_annotations += 1
                yield {**note, "trace_id": roots[note["span_id"]]}
            for note in phoenix.trace_annotations(trace_ids):
                stats.trace_annotations += 1
                yield note
    except phoenix.http_errors as exc:
        raise ConnectionError(f"Phoenix at {url} (project {project!r}): {exc}") from exc
    finally:
        phoenix.close()


def export_phoenix(
    output: os.PathLike | str,
    url: str | None = None,
    project: str = "default",
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    page_size: int = 500,
    api_key: str | None = None,
    headers: dict[str, str] | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> PhoenixExport:
    """Write :func:`iter_phoenix_records` to a JSONL file (atomically) that ``harvest`` reads.

    An existing file is replaced only with ``overwrite=True``; options are checked before connecting.
    """
    import json

    from adapter_retrievers.outputs import check_output
    from adapter_retrievers.progress import progress_bar

    check_output(output, overwrite, name="output")
    url = check_options(url, since, until, page_size)[0]
    check_reachable(url)  # before the output is opened and the progress line started
    stats = PhoenixExport()
    with (
        atomic_writer(Path(output), "w") as handle,
        progress_bar(None, "exporting from Phoenix", "record", enabled=progress) as bar,
    ):
        for record in iter_phoenix_records(url, project, since, until, page_size, api_key, headers, stats):
            handle.write(json.dumps(record, default=str) + "\n")
            bar.update()
    return stats
