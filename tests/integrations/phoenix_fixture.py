"""A real Arize Phoenix server (`phoenix serve`) on 127.0.0.1 for the session, shared by the Phoenix tests.

Started and stopped by :func:`adapter_retrievers.integrations.phoenix.local_phoenix` (the drift benchmark and
the ``nightly_refresh`` notebook use the same): free ports, a temporary working dir, SIGTERM at the end.
"""

from __future__ import annotations

import pytest

from adapter_retrievers.integrations.phoenix import local_phoenix, phoenix_installed


@pytest.fixture(scope="session")
def phoenix_server(tmp_path_factory):
    """Base URL (``http://127.0.0.1:PORT``) of a real Phoenix server with an empty SQLite store."""
    if not phoenix_installed():
        pytest.skip("arize-phoenix is not installed (pip install 'adapter-retrievers[phoenix]')")
    with local_phoenix(tmp_path_factory.mktemp("phoenix-server")) as url:
        yield url
