"""Where the randomness of privacy comes from: noise, sampling, and secret side streams.

Every random draw that a DP guarantee depends on (Gaussian noise, the server's Poisson
sampling of devices under DP, a device's Poisson masks) comes from a
:class:`ChaCha20Generator`: the ChaCha20 stream cipher (RFC 8439, 20 rounds, 256-bit key)
used as a counter-mode CSPRNG, its keystream computed by OpenSSL through the
``cryptography`` package. It is a :class:`numpy.random.Generator`, so any numpy method
works on it; the ones the code base uses in bulk (``random``, ``standard_normal``, and the
noise of :func:`gaussian`) read the keystream in bulk, the others word by word.

* :func:`secure_generator`: the key is 256 bits from ``os.urandom`` (via :mod:`secrets`),
  never written anywhere. This is what a deployment uses.
* :func:`seeded_generator`: the key is SHA-256 of the public seed and stream numbers. For
  simulations only: whoever knows the seed can regenerate every draw, and so subtract the
  noise and recompute who was sampled.

Both run the same code, so a seeded simulation measures exactly what a deployment does,
speed included.

:func:`secret_torch_generator` gives a ``torch.Generator`` for draws that must be secret
but are not the noise of record (negative items and dropout masks on a DP device): it is
torch's Mersenne Twister, seeded with 63 bits from a CSPRNG, and only its *outputs*
influence what is released.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from randomgen import UserBitGenerator

from pollinate.shared.errors import ConfigError

#: ChaCha rounds: 20 is the cipher's standard strength (RFC 8439).
CHACHA_ROUNDS = 20

#: Stream numbers of :func:`seeded_generator`, one per use of a simulation's noise seed,
#: so that no two uses of the same seed share a stream.
STREAM_SERVER_NOISE = 0
STREAM_SERVER_SAMPLER = 1
STREAM_DEVICE = 2

SECURE_DESCRIPTION = "secure (ChaCha20 CSPRNG seeded with 256 bits from os.urandom, unrecorded)"

#: The name in a seeded generator's state (what a checkpoint records).
STATE_NAME = "pollinate.ChaCha20"

_BLOCK = 64  # bytes per ChaCha20 block
_WORDS_PER_BLOCK = _BLOCK // 8
_COUNTER_LIMIT = 2**128  # the block counter is the state's words 12-15
_LOW_WORD = 2**32  # OpenSSL carries past word 12 only into word 13; never ask it to
_CHUNK_BLOCKS = 2**14  # 1 MiB of keystream per call into OpenSSL
#: Coordinates per chunk of :func:`gaussian` (its scratch, about 1 MiB, stays in cache).
GAUSSIAN_CHUNK = 8192
_SEED_DOMAIN = b"pollinate.shared.privacy.randomness.seeded_generator.v1:"
_ZEROS = bytes(_CHUNK_BLOCKS * _BLOCK)  # read-only, what OpenSSL encrypts


def seeded_description(seed: int) -> str:
    return (
        f"SEEDED with {seed} for reproducibility (simulation only; not private against "
        "anyone who knows the seed)"
    )


class ChaCha20Generator(np.random.Generator):
    """A numpy ``Generator`` whose every bit is the ChaCha20 keystream of one 256-bit key.

    The keystream is that of RFC 8439 with the 128-bit block counter spanning state words
    12-15 (the "nonce" is its upper 96 bits, all zero at the start): block ``b`` is
    ``ChaCha20(key, b)``, handed out once, in order, and never again. A bulk draw takes
    whole fresh blocks (its unused tail is discarded); the word-by-word path of numpy's
    other methods reads a buffer of the rest of one block. Bulk requests are split where
    the counter's low 32-bit word wraps, so the result does not depend on how a backend
    carries the counter.

    ``secure`` generators refuse to export their state (``bit_generator.state`` and
    pickling raise): it is the key, and it determines every draw. A seeded one's state is
    ``{"bit_generator": "pollinate.ChaCha20", "key": hex, "counter": next block,
    "buffer": unused words of the word-by-word path}`` and can be set back.
    """

    def __init__(self, key: bytes, *, secure: bool) -> None:
        if len(key) != 32:
            raise ConfigError(f"a ChaCha20 key is 32 bytes, got {len(key)}")
        self._key = bytes(key)
        self._secure = secure
        self._counter = 0
        self._buffer: list[int] = []
        self._lock = threading.Lock()
        super().__init__(
            UserBitGenerator(
                self._next_raw, 64, state_getter=self._get_state, state_setter=self._set_state
            )
        )

    @property
    def secure(self) -> bool:
        return self._secure

    # -- the keystream -----------------------------------------------------------------
    def _reserve(self, blocks: int) -> int:
        """The first of ``blocks`` fresh block numbers, which nobody else will get."""
        with self._lock:
            first = self._counter
            if first + blocks > _COUNTER_LIMIT:
                raise OverflowError("this ChaCha20 stream is exhausted (2^128 blocks)")
            self._counter = first + blocks
            return first

    def _keystream(self, first: int, blocks: int, out: memoryview) -> None:
        pos = 0
        while blocks > 0:
            run = min(blocks, _CHUNK_BLOCKS, _LOW_WORD - first % _LOW_WORD)
            size = run * _BLOCK
            nonce = first.to_bytes(16, "little")
            enc = Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()
            done = enc.update_into(memoryview(_ZEROS)[:size], out[pos : pos + size])
            assert done == size
            first, blocks, pos = first + run, blocks - run, pos + size

    def words(self, count: int) -> np.ndarray:
        """``count`` fresh 64-bit words of keystream (little-endian), from fresh blocks."""
        blocks = -(-count // _WORDS_PER_BLOCK)
        out = np.empty(blocks * _WORDS_PER_BLOCK, dtype="<u8")
        if blocks:
            self._keystream(self._reserve(blocks), blocks, out.data.cast("B"))
        return out[:count]

    def _next_raw(self, _voidp: int) -> int:
        # Called by numpy's word-by-word methods; must not raise (randomgen ignores it).
        if not self._buffer:
            self._buffer = self.words(_WORDS_PER_BLOCK).tolist()[::-1]
        return self._buffer.pop()

    # -- state ---------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        if self._secure:
            raise TypeError("a secure generator's state is its key; it is never exported")
        return {
            "bit_generator": STATE_NAME,
            "key": self._key.hex(),
            "counter": self._counter,
            "buffer": self._buffer[::-1],
        }

    def _set_state(self, state: Any) -> None:
        if self._secure:
            raise TypeError("a secure generator's state is never set from outside")
        if not isinstance(state, dict) or state.get("bit_generator") != STATE_NAME:
            name = state.get("bit_generator") if isinstance(state, dict) else type(state)
            raise ValueError(f"not a {STATE_NAME} state (got {name!r})")
        key = bytes.fromhex(state["key"])
        counter, buffer = int(state["counter"]), [int(w) for w in state["buffer"]]
        if len(key) != 32 or not 0 <= counter <= _COUNTER_LIMIT:
            raise ValueError("a ChaCha20 state needs a 32-byte key and a counter in [0, 2^128]")
        if len(buffer) >= _WORDS_PER_BLOCK or any(not 0 <= w < 2**64 for w in buffer):
            raise ValueError("a ChaCha20 state's buffer holds fewer than 8 64-bit words")
        with self._lock:
            self._key, self._counter, self._buffer = key, counter, buffer[::-1]

    def __reduce__(self) -> Any:
        if self._secure:
            raise TypeError("a secure generator is never pickled or copied: it holds the key")
        return (_restore, (self._get_state(),))

    # -- bulk draws ------------------------------------------------------------------------
    def random(self, size: Any = None, dtype: Any = np.float64, out: Any = None) -> Any:
        """Uniform doubles in [0, 1), ``(w >> 11) · 2^-53`` (numpy's own map of a word)."""
        if out is not None or np.dtype(dtype) != np.float64:
            return super().random(size, dtype=dtype, out=out)
        shape = () if size is None else size
        count = math.prod(np.atleast_1d(np.asarray(shape, dtype=np.int64)).tolist())
        values = _unit(self.words(count)).reshape(shape)
        return float(values) if size is None else values

    def standard_normal(self, size: Any = None, dtype: Any = np.float64, out: Any = None) -> Any:
        """N(0, 1) by Box-Muller: both outputs ``r cos θ``, ``r sin θ`` of each pair."""
        if out is not None or np.dtype(dtype) != np.float64:
            return super().standard_normal(size, dtype=dtype, out=out)
        shape = () if size is None else size
        count = math.prod(np.atleast_1d(np.asarray(shape, dtype=np.int64)).tolist())
        pairs = -(-count // 2)
        w = self.words(2 * pairs)
        r = np.sqrt(-2.0 * np.log(_open_unit(w[:pairs])))
        theta = torch.from_numpy(_unit(w[pairs:]) * (2 * math.pi))
        both = np.concatenate([r * theta.cos().numpy(), r * theta.sin().numpy()])
        values = both[:count].reshape(shape)
        return float(values) if size is None else values


def _restore(state: dict[str, Any]) -> ChaCha20Generator:
    rng = ChaCha20Generator(bytes.fromhex(state["key"]), secure=False)
    rng.bit_generator.state = state
    return rng


def _top53(words: np.ndarray) -> np.ndarray:
    """The top 53 bits ``k`` of each 64-bit word, as float64 (exact: ``k < 2^53``)."""
    return (words >> np.uint64(11)).view(np.int64).astype(np.float64)


def _unit(words: np.ndarray) -> np.ndarray:
    """[0, 1) doubles ``k · 2^-53`` (numpy's own map of a word to a double)."""
    values = _top53(words)
    values *= 2.0**-53
    return values


def _open_unit(words: np.ndarray) -> np.ndarray:
    """(0, 1) doubles ``(k + 1/2) · 2^-53``: never 0, so their logarithm is finite."""
    values = _top53(words)
    values += 0.5
    values *= 2.0**-53
    return values


def secure_generator() -> ChaCha20Generator:
    """A fresh ChaCha20 generator keyed with 256 bits from ``os.urandom``.

    Its state must never be stored or sent: it determines every future draw (the generator
    refuses to export it).
    """
    return ChaCha20Generator(secrets.token_bytes(32), secure=True)


def seeded_generator(seed: int, *stream: int) -> ChaCha20Generator:
    """A ChaCha20 generator keyed with SHA-256 of ``seed`` and ``stream`` (simulation only).

    The key is ``SHA-256(domain ‖ "seed,s1,s2,...")`` (decimal numbers: distinct tuples
    give distinct keys). ``stream`` separates uses of one seed (see the ``STREAM_*``
    constants). Not private against anyone who knows ``seed``.
    """
    numbers = (int(seed), *(int(s) for s in stream))
    if any(s < 0 for s in numbers):
        raise ConfigError(f"seeds and stream numbers must be >= 0, got {numbers}")
    key = hashlib.sha256(_SEED_DOMAIN + ",".join(map(str, numbers)).encode()).digest()
    return ChaCha20Generator(key, secure=False)


def secret_torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A ``torch.Generator`` seeded with 63 bits drawn from ``rng``.

    For randomness that must be secret but is not the noise of record (negatives, dropout
    masks): an adversary who never sees ``rng``'s output cannot predict it.
    """
    return torch.Generator().manual_seed(int(rng.integers(0, 2**63, dtype=np.uint64)))


def gaussian(rng: np.random.Generator, shape: int | tuple[int, ...], std: float) -> np.ndarray:
    """The noise of record: ``N(0, std²)`` per coordinate, float64, drawn from ``rng``.

    Each coordinate takes four fresh 64-bit words of ``rng`` (of its ChaCha20 keystream,
    or any other generator's ``bit_generator.random_raw``), read as four independent
    53-bit uniforms ``u₁, u₂ ∈ (0, 1)`` (``(k + ½)·2⁻⁵³``, ``k`` a word's top 53 bits) and
    ``v₁, v₂ ∈ [0, 1)`` (``k·2⁻⁵³``); coordinates go in chunks of ``m ≤``
    :data:`GAUSSIAN_CHUNK` (in C order), each chunk reading ``4m`` fresh words as its
    ``m`` first ``u₁``, then ``m`` ``u₂``, ``m`` ``v₁``, ``m`` ``v₂``. A coordinate is
    ``std · (x₁ + x₂) / √2`` with ``xᵢ = √(-2 ln uᵢ) · sin(2π vᵢ)``:
    Box-Muller, so each ``xᵢ`` is exactly N(0, 1) in real arithmetic and the result is
    exactly ``N(0, std²)``; in float64 each step (log, sqrt, sin, products) is within an
    ulp or two of the real value. The 53-bit ``uᵢ`` put ``|xᵢ| ≤ √(2·54·ln 2) ≈ 8.65``:
    the mass cut from each ``N(0, 1)`` tail is ``P(|N(0,1)| > 8.65) < 10⁻¹⁷``, a total
    variation far below any δ in use.

    Floating-point attacks. A floating-point sampler does not output the real-valued
    distribution the proof assumes: the values it can produce are a sparse, uneven subset
    of the doubles, and which ones are reachable can reveal the mechanism's input
    (Mironov 2012, for the Laplace mechanism; Jin et al. 2021, arXiv:2107.10138, for
    Gaussian samplers, including inverting Box-Muller to recover its uniform inputs). The
    mitigation is that of arXiv:2107.10138 §5.1 with n = 2, which Opacus uses in
    ``secure_mode``: the sum of four N(0, 1) draws, halved. Here the four draws are both
    outputs of two Box-Muller pairs, ``(g₁ + g₂ + g₃ + g₄) / 2`` with
    ``g₁ + g₂ = r₁ (cos θ₁ + sin θ₁) = √2 · r₁ sin(θ₁ + π/4)``; since ``θ₁ + π/4`` is again
    uniform, that is the ``(x₁ + x₂)/√2`` above, one sine per pair instead of a cosine and
    a sine. An attacker must explain each output by four unknown 53-bit uniforms instead
    of two (one Box-Muller draw), raising the work of their search from about ``2^53`` to
    ``2^159``, as with Opacus's four draws (or the four ziggurat draws used before).

    What it does **not** guarantee: the output is still a float, so the mechanism is not
    proven DP in floating-point arithmetic (that would need a discrete Gaussian,
    Canonne-Kamath-Steinke 2020, or a snapping mechanism); the noisy value is rounded
    again where it is added to a float32 gradient, by an amount that depends on the
    gradient. Box-Muller's run time does not depend on the draw (unlike a ziggurat or a
    rejection sampler), but timing channels are not otherwise addressed. Its secrecy is
    that of ``rng``: use :func:`secure_generator` outside simulations.
    """
    if not (math.isfinite(std) and std >= 0):
        raise ConfigError(f"the noise standard deviation must be finite and >= 0, got {std}")
    if std == 0:
        return np.zeros(shape, dtype=np.float64)
    count = math.prod((shape,) if isinstance(shape, int) else shape)
    total = np.empty(count, dtype=np.float64)
    for start in range(0, count, GAUSSIAN_CHUNK):
        m = min(GAUSSIAN_CHUNK, count - start)
        if isinstance(rng, ChaCha20Generator):
            words = rng.words(4 * m)
        else:
            words = np.asarray(rng.bit_generator.random_raw(4 * m), dtype=np.uint64)
        radius = _open_unit(words[: 2 * m])  # u₁, u₂ of every coordinate of the chunk
        np.log(radius, out=radius)
        radius *= -2.0
        np.sqrt(radius, out=radius)
        angle = _unit(words[2 * m :])  # v₁, v₂
        angle *= 2 * math.pi
        torch.from_numpy(angle).sin_()  # torch's float64 sine is twice numpy's speed here
        radius *= angle
        np.add(radius[:m], radius[m:], out=total[start : start + m])
    total *= std / math.sqrt(2)
    return total.reshape(shape)


@dataclass(frozen=True)
class RandomSource:
    """A generator and how it was seeded, for the run's privacy report.

    ``secure`` is True for :func:`secure_generator` (its state is never checkpointed), False
    for a seeded one (reproducible, and saved with a checkpoint so a resumed run equals an
    uninterrupted one).
    """

    rng: np.random.Generator
    description: str
    secure: bool


def secure_source(role: str) -> RandomSource:
    return RandomSource(secure_generator(), f"{role}: {SECURE_DESCRIPTION}", secure=True)


def seeded_source(role: str, seed: int, *stream: int) -> RandomSource:
    return RandomSource(
        seeded_generator(seed, *stream), f"{role}: {seeded_description(seed)}", secure=False
    )


def checkpoint_state(source: RandomSource) -> dict[str, Any] | None:
    """``source``'s generator state as JSON-able data, or ``None`` when it is secure.

    A secure generator's state is never written anywhere: it would let whoever reads it
    regenerate the noise, or the sample, it produced afterwards.
    """
    if source.secure:
        return None
    state = source.rng.bit_generator.state
    return json.loads(json.dumps(state, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__} in a generator state")
