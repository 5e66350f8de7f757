"""The HTTP feature service (``pgfeatures serve``): Starlette on uvicorn over the async store.

- ``config``: settings, flags > environment > config file > defaults;
- ``service``: one worker's store, coalescing, deadlines, batch chunks, pushes, readiness (no HTTP);
- ``coalesce``: merging concurrent single-key reads into batched queries;
- ``app``: routes, auth, errors; ``create_app`` is the factory;
- ``parsing``: request bodies checked before any I/O: keys per entity, selections, pushes, output;
- ``encoding``: results as JSON, ``real`` values printed as float32;
- ``vectors``: a feature service's vector as JSON or raw little-endian numbers;
- ``streaming``: a large batch's answer sent chunk by chunk;
- ``inventory``: tables and services as found (rows, age of the newest row), refreshed in the background;
- ``errors``: how failures map to HTTP statuses and JSON bodies;
- ``metrics``: Prometheus metrics; ``openapi``: the OpenAPI document;
- ``protocol``: uvicorn's HTTP protocol with a header timeout;
- ``runner``: uvicorn and its workers.

Names are imported on first use, so ``pgfeatures --help`` does not load Starlette.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "app",
    "warmup_hooks": "app",
    "ServerConfig": "config",
    "load_config": "config",
    "run": "runner",
    "Service": "service",
    "WarmupHook": "service",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
