"""Per-sample random generators, ``np.random.default_rng([seed, sample_id])``, built in bulk.

Why: every sample has its own generator (its rows must not depend on the batch or worker
that made them), and numpy builds one in ~15 us, mostly hashing the seed words through
``SeedSequence`` one sample at a time: a quarter of a simulated E. coli sample's cost.
Here the hash runs on whole arrays of sample ids (numpy's SeedSequence algorithm, the
same words, constants and order: its output is covered by numpy's stream-compatibility
policy), and each PCG64 is seeded from its row, ~1 us a sample (a sample's whole draw,
prior, design and noise: 25 -> 7 us). The generators are identical to
``default_rng([seed, sample_id])``: the tests compare them draw for draw.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.random import PCG64, Generator
from numpy.random.bit_generator import ISeedSequence

_MASK = 0xFFFFFFFF
_POOL = 4  # SeedSequence's default pool_size, in 32-bit words
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_SHIFT = 16


def _words(value: int) -> list[int]:
    """An integer as SeedSequence reads it: 32-bit words, least significant first."""
    value = int(value)
    if value < 0:
        raise ValueError(f"seeds and sample ids must be non-negative, got {value}")
    out = [value & _MASK]
    value >>= 32
    while value:
        out.append(value & _MASK)
        value >>= 32
    return out


def _states(entropy: np.ndarray) -> np.ndarray:
    """SeedSequence(entropy row).generate_state(4, uint64) for each row of (n, L) uint32."""
    n, length = entropy.shape
    h = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal h
        value = value ^ np.uint32(h)
        h = (h * _MULT_A) & _MASK
        value = value * np.uint32(h)
        return value ^ (value >> np.uint32(_SHIFT))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
        return r ^ (r >> np.uint32(_SHIFT))

    zero = np.zeros(n, np.uint32)
    pool = [hashmix(entropy[:, i] if i < length else zero) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, length):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(entropy[:, src]))

    h = _INIT_B
    state = np.empty((n, 8), np.uint32)
    for i in range(8):
        value = pool[i % _POOL] ^ np.uint32(h)
        h = (h * _MULT_B) & _MASK
        value = value * np.uint32(h)
        state[:, i] = value ^ (value >> np.uint32(_SHIFT))
    return state.astype("<u4").view("<u8").astype(np.uint64)


class _Seeded(ISeedSequence):
    """A seed sequence whose PCG64 state words are already worked out. numpy documents
    that "BitGenerator implementations should treat any object that adheres to this
    interface [ISeedSequence] as a seed sequence" (its stubs name SeedSequence only)."""

    __slots__ = ("_state",)

    def __init__(self, state: np.ndarray):
        self._state = state

    def generate_state(self, n_words, dtype=np.uint64):  # PCG64 asks for 4 uint64 words
        return self._state


def sample_generators(seed: int, sample_ids: np.ndarray) -> Iterator[Generator]:
    """``np.random.default_rng([seed, i]) for i in sample_ids``, fast. One at a time: a
    list of thousands of live generators would survive the garbage collector's young
    generations, and the full collections they bring on cost more than the draws."""
    head = _words(seed)
    ids = np.asarray(sample_ids).astype(np.int64, copy=False)
    if len(ids) and ids.min() < 0:
        raise ValueError(f"sample ids must be non-negative, got {ids.min()}")
    two = ids > _MASK  # ids of two 32-bit words; the others have one
    entropy = np.empty((len(ids), len(head) + 2), np.uint32)
    entropy[:, : len(head)] = head
    entropy[:, len(head)] = ids & _MASK
    entropy[:, len(head) + 1] = ids >> 32
    states = np.empty((len(ids), 4), np.uint64)
    for rows, width in ((~two, len(head) + 1), (two, len(head) + 2)):
        if rows.any():
            states[rows] = _states(entropy[rows, :width])
    return (Generator(PCG64(_Seeded(state))) for state in states)  # type: ignore[arg-type]
