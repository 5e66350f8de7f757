"""Keys seen more than once in one load, found with numpy in O(n log n)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Odd 64-bit multipliers mixing a key's words into one hash; equal hashes are then compared in full.
_MIX = np.array([1, 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)


def _mix(words: int) -> np.ndarray:
    if words <= len(_MIX):
        return _MIX[:words]
    return np.resize(_MIX, words) * np.arange(1, 2 * words, 2, dtype=np.uint64)  # more odd multipliers


@dataclass(frozen=True)
class Duplicates:
    superseded: np.ndarray  # ordinals (seq) of rows that another row with the same key replaces
    keys: int  # distinct keys seen more than once
    first: np.ndarray  # ordinals of every occurrence of the first duplicated key


def find_duplicates(keys: np.ndarray, seqs: np.ndarray, stamps: np.ndarray | None = None) -> Duplicates | None:
    """Keys (``(n, w)`` uint8, w a multiple of 8: keys.comparable) seen more than once, in O(n log n)
    over 64-bit hashes; None if all are unique. Of a key's rows the one with the largest ``stamps``
    (event time) wins, equal ones by load order; without ``stamps``, the last row loaded wins."""
    if len(keys) < 2:
        return None
    words = np.ascontiguousarray(keys).view(np.uint64)
    hashes = np.bitwise_xor.reduce(words * _mix(words.shape[1]), axis=1)
    ordered = np.sort(hashes)
    if not (ordered[1:] == ordered[:-1]).any():  # the common case, at half the cost of an argsort
        return None
    order = np.argsort(hashes, kind="stable")
    same = hashes[order][1:] == hashes[order][:-1]
    if not same.any():
        return None
    candidates = order[np.flatnonzero(np.r_[same, False] | np.r_[False, same])]
    groups, inverse, counts = np.unique(words[candidates], axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    repeated = counts[inverse] > 1
    if not repeated.any():
        return None  # hash collisions only
    rows, group = candidates[repeated], inverse[repeated]
    # each key's rows in event-time order (if given), then load order; the last one wins
    by_group = np.lexsort((seqs[rows], group) if stamps is None else (seqs[rows], stamps[rows], group))
    rows, group = rows[by_group], group[by_group]
    superseded = seqs[rows][:-1][group[1:] == group[:-1]]
    first_group = group[np.argmin(seqs[rows])]
    return Duplicates(superseded, int((counts > 1).sum()), np.sort(seqs[rows[group == first_group]]))
