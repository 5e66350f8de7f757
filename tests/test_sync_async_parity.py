"""One source for sync and async: every ``*_async.py`` module's sync twin is generated from it and
current, and the public APIs of each pair agree in names, parameters and docstrings."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import async_to_sync  # noqa: E402

PAIRS = [
    (
        f"pgfeatures.{src.relative_to(async_to_sync.PACKAGE).with_suffix('').as_posix().replace('/', '.')}",
        f"pgfeatures.{dst.relative_to(async_to_sync.PACKAGE).with_suffix('').as_posix().replace('/', '.')}",
    )
    for src, dst in async_to_sync.pairs()
]


def test_generated_modules_are_current():
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "async_to_sync.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_there_is_something_to_compare():
    names = {a for a, _ in PAIRS}
    assert {"pgfeatures.store.store_async", "pgfeatures.connections.pool_async"} <= names


def _sync_name(name: str) -> str:
    if name in async_to_sync.RENAMES:
        return async_to_sync.RENAMES[name]
    return name[: -len("_async")] if name.endswith("_async") else name


def _sync_doc(text: str | None) -> str:
    """What the generator turns a docstring into (class names renamed, the source line noted)."""
    text = (text or "").replace("(async source)", "(generated)")
    return async_to_sync._ASYNC_NAME.sub(lambda m: async_to_sync.RENAMES.get(m[0], m[0]), text)


def _sync_annotation(text: str) -> str:
    """What the generator turns an annotation (code) into: every name renamed."""
    return re.sub(r"\b\w+\b", lambda m: _sync_name(m[0]), text)


def _public(module):
    return {
        n: v
        for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
    }


def _members(obj):
    return {
        n: v
        for n, v in inspect.getmembers(obj)
        if not n.startswith("_") or n in ("__init__", "__aenter__", "__aexit__", "__enter__", "__exit__")
    }


def _compare(async_obj, sync_obj, where: str, problems: list[str]) -> None:
    a_doc = _sync_doc(inspect.getdoc(async_obj))
    s_doc = re.sub(r"\(generated from \S+\)", "(generated)", inspect.getdoc(sync_obj) or "")
    if a_doc != s_doc:
        problems.append(f"{where}: docstrings differ")
    if callable(async_obj) and not inspect.isclass(async_obj):
        try:
            a_sig, s_sig = inspect.signature(async_obj), inspect.signature(sync_obj)
        except (TypeError, ValueError):
            return
        a_params = [
            (p.name, p.kind, repr(p.default), _sync_annotation(str(p.annotation))) for p in a_sig.parameters.values()
        ]
        s_params = [(p.name, p.kind, repr(p.default), str(p.annotation)) for p in s_sig.parameters.values()]
        if a_params != s_params:
            problems.append(f"{where}: parameters differ: {a_params} vs {s_params}")


@pytest.mark.parametrize("async_name,sync_name", PAIRS)
def test_public_apis_agree(async_name, sync_name):
    a_mod, s_mod = importlib.import_module(async_name), importlib.import_module(sync_name)
    a_public, s_public = _public(a_mod), _public(s_mod)
    assert sorted(_sync_name(n) for n in a_public) == sorted(s_public), "public names differ"
    problems: list[str] = []
    for name, a_obj in a_public.items():
        s_obj = s_public[_sync_name(name)]
        _compare(a_obj, s_obj, f"{sync_name}.{_sync_name(name)}", problems)
        if inspect.isclass(a_obj):
            a_members, s_members = _members(a_obj), _members(s_obj)
            assert sorted(_sync_name(n) for n in a_members) == sorted(s_members), f"{name}: members differ"
            for member, a_m in a_members.items():
                _compare(
                    a_m, s_members[_sync_name(member)], f"{sync_name}.{_sync_name(name)}.{_sync_name(member)}", problems
                )
    assert not problems, "\n".join(problems)


def test_the_stores_document_every_option():
    from pgfeatures import AsyncFeatureStore, FeatureStore, StoreOptions

    for cls in (FeatureStore, AsyncFeatureStore):
        # The keyword settings (**settings) are StoreOptions' fields: each is documented too.
        params = [p for p in inspect.signature(cls).parameters if p not in ("self", "settings")]
        params += StoreOptions.names()
        assert {"pool_size", "connect_timeout", "read_dsns", "hot_keys", "credentials", "pooler"} <= set(params)
        doc = inspect.getdoc(cls) or ""
        missing = [p for p in params if f"``{p}``" not in doc]
        assert not missing, f"{cls.__name__} docstring does not describe {missing}"
