"""Request-time transforms the tests name in their definitions (``support.transforms:NAME``).

``CALLS`` counts the calls of each function and ``THREADS`` records the thread each ran on, so a test
can tell one call per batch from one per row, and a transform run off the event loop from one run on it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

CALLS: Counter[str] = Counter()
THREADS: list[int] = []

not_callable = 3  # a name a definition may point at by mistake


def ratios(context: Mapping[str, Any], features: Mapping[str, Any], status: Mapping[str, str]) -> dict[str, Any]:
    """Three features from two context values and the fetched ones (row-wise, with the status)."""
    CALLS["ratios"] += 1
    THREADS.append(threading.get_ident())
    avg = features["user_stats.amount_avg"]
    return {
        "amount_ratio": context["amount"] / avg,
        "is_big": context["amount"] > 100.0,
        "risk": features["merchant_risk.chargeback_rate"] * (2.0 if status["user_stats"] != "present" else 1.0),
    }


def ratios_columns(context: Mapping[str, Sequence[Any]], features: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """``ratios`` on columns (``batch = true``), without the status: one call per batch."""
    CALLS["ratios_columns"] += 1
    amounts, avgs = context["amount"], features["user_stats.amount_avg"]
    return {"amount_ratio": [a / b for a, b in zip(amounts, avgs)], "far": [lat > 45.0 for lat in context["lat"]]}


def numpy_columns(context: Mapping[str, Sequence[Any]], features: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """Columns in, numpy arrays out."""
    import numpy as np

    CALLS["numpy_columns"] += 1
    return {"doubled": np.asarray(context["amount"], dtype=np.float64) * 2}


def raises(context: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, Any]:
    raise ZeroDivisionError("float division by zero in the model")


def wrong_type(context: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, Any]:
    return {"amount_ratio": "not a number"}


def misses_output(context: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def not_a_mapping(context: Mapping[str, Any], features: Mapping[str, Any]) -> Any:
    return 1.5


def short_column(context: Mapping[str, Sequence[Any]], features: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    return {"amount_ratio": [1.0]}


def three_features(context: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, Any]:
    """The benchmark's transform: 3 features from 2 context values and 4 fetched features."""
    amount, lat = context["amount"], context["lat"]
    return {
        "ratio": amount / (features["t00.f0"] + 1.0),
        "spread": features["t00.f1"] - features["t00.f2"] + lat,
        "big": amount > features["t00.f3"],
    }


def country_flag(context: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, Any]:
    """A string mapped to a number (tests/test_rich_types.py): a service's vector then leaves the string out."""
    return {"is_de": features["profile.country"] == "DE"}


def basket_share(context: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, Any]:
    """A materialized service's transform (tests/test_rich_types.py: the doctor compares it without one)."""
    score = features["profile.score"] or 0.0
    return {"share": context["basket"] / (context["basket"] + score + 1.0)}
