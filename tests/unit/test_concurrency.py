"""The async/sync pairs the generated twins call (connections/concurrency.py), and the generator's
refusal of code written in a comment. No database."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import sys
import threading
import time
from pathlib import Path

import pytest

from pgfeatures.connections import concurrency
from pgfeatures.load import prefetch

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [
    (concurrency, "sleep_async", "sleep"),
    (concurrency, "to_thread_async", "to_thread"),
    (concurrency, "open_in_constructor_async", "open_in_constructor"),
    (prefetch, "prefetched_async", "prefetched"),
    (prefetch, "copy_writer_async", "copy_writer"),
]


@pytest.mark.parametrize("module, a, s", PAIRS)
def test_each_pair_takes_the_same_parameters(module, a, s):
    names = [list(inspect.signature(getattr(module, n)).parameters) for n in (a, s)]
    assert names[0] == names[1]


def test_the_background_classes_agree():
    def public(cls):
        return {n: list(inspect.signature(m).parameters) for n, m in vars(cls).items() if not n.startswith("_")}

    assert public(concurrency.AsyncBackground) == public(concurrency.Background)


def test_sync_background_threads_are_tracked_and_stopped():
    background = concurrency.Background()
    rounds = []

    def probe():
        while len(rounds) < 1000:
            rounds.append(1)
            background.sleep(0.5)  # ends at once when stopped

    for _ in range(3):
        background.spawn(probe)
    assert background.running() == 3
    started = time.monotonic()
    background.stop(timeout=5.0)
    assert background.running() == 0 and time.monotonic() - started < 1.0
    assert not [t for t in threading.enumerate() if t.name == "pgfeatures-probe"]


def test_async_background_tasks_are_cancelled_at_stop():
    async def run():
        background = concurrency.AsyncBackground()
        cancelled = []

        async def probe():
            try:
                await background.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(1)
                raise

        background.spawn(probe)
        await asyncio.sleep(0)
        assert background.running() == 1
        await background.stop(timeout=1.0)
        assert background.running() == 0 and cancelled == [1]

    asyncio.run(run())


def _tool():
    spec = importlib.util.spec_from_file_location("async_to_sync", ROOT / "tools" / "async_to_sync.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("async_to_sync", module)
    spec.loader.exec_module(module)
    return module


def test_the_generator_refuses_code_in_a_comment():
    tool = _tool()
    with pytest.raises(SystemExit, match=r"x_async.py:2: a '# sync:' directive"):
        tool.transform("import asyncio\nawait asyncio.sleep(1)  # sync: time.sleep(1)\n", "x_async.py")


def test_the_generator_turns_awaitable_into_its_result_and_drops_unused_imports():
    tool = _tool()
    source = (
        '"""A module (async source)."""\n\nimport asyncio\nfrom collections.abc import Awaitable, Callable\n\n'
        "Run = Callable[[int], Awaitable[dict[str, int]]]\n\n\nasync def f_async(run: Run) -> None:\n"
        "    asyncio.current_task()  # async-only\n    await run(1)\n"
    )
    twin = tool.transform(source, "x_async.py")
    assert "Run = Callable[[int], dict[str, int]]" in twin
    assert "import asyncio" not in twin and "Awaitable" not in twin
    assert "def f(run: Run) -> None:" in twin
