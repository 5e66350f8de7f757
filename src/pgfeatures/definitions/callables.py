"""A callable named by import path, ``"package.module:name"``: how ``--credentials`` names a credential
provider and a feature service names a request-time transform (resolved once, when asked for).

As ASGI servers do for an app, the current working directory is put first on ``sys.path`` (unless it
is on it already) before the import, so ``mycompany.features:token`` run from the directory holding
``mycompany/`` is found however pgfeatures was started (the ``pgfeatures`` script does not put the
working directory on the path; ``python -m`` does).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any


def import_callable(spec: str, what: str, error: type[Exception]) -> Callable[..., Any]:
    """The callable named ``"package.module:name"`` (``name`` may be dotted: ``module:Class.method``).

    Raises ``error`` with a message that starts with ``what`` and the spec (``credential provider
    'x:y'``) and says what was wrong: bad form, module not importable or failing to import, no such
    attribute, not callable.
    """
    module_name, colon, attr = str(spec).partition(":")
    if not colon or not module_name.strip() or not attr.strip():
        raise error(f"{what} {spec!r} must be written 'module:callable' (e.g. mycompany.features:token)")
    module_name, attr = module_name.strip(), attr.strip()
    _put_cwd_on_path()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name or ""
        if isinstance(exc, ModuleNotFoundError) and (module_name == missing or module_name.startswith(missing + ".")):
            raise error(
                f"{what} {spec!r}: no module named {missing!r} (looked in the current "
                f"directory {os.getcwd()} and on sys.path)"
            ) from None
        raise error(f"{what} {spec!r}: importing {module_name} failed: {exc}") from None
    except Exception as exc:  # the module itself raised (a bad configuration, a syntax error, ...)
        raise error(f"{what} {spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}") from None
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise error(f"{what} {spec!r}: {module_name} has no attribute {attr!r}") from None
    if not callable(target):
        raise error(f"{what} {spec!r} is not callable (it is a {type(target).__name__})")
    return target


def _put_cwd_on_path() -> None:
    """The working directory first on ``sys.path``, unless already there ('' and '.' count)."""
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed
        return
    if cwd not in {os.path.abspath(entry) for entry in sys.path if isinstance(entry, str)}:
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
