"""A line that cannot be written whole is an error, never a silently cut record."""

import errno
import os

import pytest

from adapter_retrievers.capture import RetrievalLog


def test_short_write_is_an_error(tmp_path, monkeypatch):
    log = RetrievalLog(tmp_path / "log.jsonl")
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[: len(data) // 2]))
    with pytest.raises(OSError) as caught:
        log.log_retrieval("a question", [{"id": "d1", "content": "text"}])
    assert caught.value.errno == errno.ENOSPC and "bytes of a line were written" in str(caught.value)
