"""The randomness of privacy: ChaCha20 generators, the noise of record, and checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy import stats

from pollinate.shared.errors import ConfigError
from pollinate.shared.privacy.randomness import (
    GAUSSIAN_CHUNK,
    ChaCha20Generator,
    checkpoint_state,
    gaussian,
    secret_torch_generator,
    secure_generator,
    secure_source,
    seeded_generator,
    seeded_source,
)

KEY = bytes(range(32))


# ----------------------------------------------------------- an independent ChaCha20
def _rotl(v: int, c: int) -> int:
    return ((v << c) | (v >> (32 - c))) & 0xFFFFFFFF


def _quarter(x: list[int], a: int, b: int, c: int, d: int) -> None:
    x[a] = (x[a] + x[b]) & 0xFFFFFFFF
    x[d] = _rotl(x[d] ^ x[a], 16)
    x[c] = (x[c] + x[d]) & 0xFFFFFFFF
    x[b] = _rotl(x[b] ^ x[c], 12)
    x[a] = (x[a] + x[b]) & 0xFFFFFFFF
    x[d] = _rotl(x[d] ^ x[a], 8)
    x[c] = (x[c] + x[d]) & 0xFFFFFFFF
    x[b] = _rotl(x[b] ^ x[c], 7)


def chacha20_block(key: bytes, words_12_to_15: tuple[int, int, int, int]) -> bytes:
    """RFC 8439 §2.3, in pure Python: 20 rounds over constants, key, counter and nonce."""
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    state += list(struct.unpack("<8I", key)) + list(words_12_to_15)
    x = state[:]
    for _ in range(10):
        _quarter(x, 0, 4, 8, 12)
        _quarter(x, 1, 5, 9, 13)
        _quarter(x, 2, 6, 10, 14)
        _quarter(x, 3, 7, 11, 15)
        _quarter(x, 0, 5, 10, 15)
        _quarter(x, 1, 6, 11, 12)
        _quarter(x, 2, 7, 8, 13)
        _quarter(x, 3, 4, 9, 14)
    return struct.pack("<16I", *((a + b) & 0xFFFFFFFF for a, b in zip(x, state, strict=True)))


def block_words(key: bytes, counter: int) -> np.ndarray:
    """Block ``counter`` of the generator's keystream: the 128-bit counter in words 12-15."""
    words = struct.unpack("<4I", counter.to_bytes(16, "little"))
    return np.frombuffer(chacha20_block(key, words), dtype="<u8").astype(np.uint64)


def test_the_reference_chacha20_matches_rfc_8439() -> None:
    """RFC 8439 §2.3.2's test vector, so the reference below is ChaCha20 itself."""
    key = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
    block = chacha20_block(key, (1, 0x09000000, 0x4A000000, 0))
    assert block.hex() == (
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
    )


# ----------------------------------------------------------------- the keystream
def test_the_stream_is_the_chacha20_keystream_of_its_key_block_after_block() -> None:
    rng = ChaCha20Generator(KEY, secure=False)
    expected = np.concatenate([block_words(KEY, b) for b in range(3)])
    np.testing.assert_array_equal(rng.words(24), expected)
    # and OpenSSL through `cryptography`, encrypting zeros with nonce = counter 3:
    enc = Cipher(algorithms.ChaCha20(KEY, (3).to_bytes(16, "little")), mode=None).encryptor()
    openssl = np.frombuffer(enc.update(bytes(64)), dtype="<u8")
    np.testing.assert_array_equal(rng.words(8), openssl)


def test_the_128_bit_counter_carries_past_its_low_word() -> None:
    """Blocks 2^32 - 1 and 2^32 (words 12-13 = (0xffffffff, 0) then (0, 1)): a request
    that crosses the wrap of the low word is split, whatever the backend carries."""
    rng = ChaCha20Generator(KEY, secure=False)
    rng.bit_generator.state = {
        "bit_generator": "pollinate.ChaCha20", "key": KEY.hex(), "counter": 2**32 - 1,
        "buffer": [],
    }  # fmt: skip
    expected = np.concatenate([block_words(KEY, 2**32 - 1), block_words(KEY, 2**32)])
    np.testing.assert_array_equal(rng.words(16), expected)
    assert rng.bit_generator.state["counter"] == 2**32 + 1


def test_no_block_is_handed_out_twice() -> None:
    """A bulk draw takes whole fresh blocks; numpy's word-by-word methods read one
    buffered block; the two never overlap."""
    rng = ChaCha20Generator(KEY, secure=False)
    a = rng.words(3)  # block 0 (its other 5 words are discarded)
    b = rng.integers(0, 2**64, dtype=np.uint64, size=2)  # block 1, word by word
    c = rng.words(9)  # blocks 2 and 3
    d = rng.integers(0, 2**64, dtype=np.uint64)  # block 1 again: its third word
    np.testing.assert_array_equal(a, block_words(KEY, 0)[:3])
    np.testing.assert_array_equal(b, block_words(KEY, 1)[:2])
    np.testing.assert_array_equal(c, np.concatenate([block_words(KEY, 2), block_words(KEY, 3)])[:9])
    assert d == block_words(KEY, 1)[2]


def test_random_is_numpys_map_of_the_top_53_bits() -> None:
    rng = ChaCha20Generator(KEY, secure=False)
    expected = (block_words(KEY, 0)[:5] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    np.testing.assert_array_equal(rng.random(5), expected)
    assert rng.random() == float(block_words(KEY, 1)[0] >> np.uint64(11)) * 2.0**-53
    assert rng.random((2, 3)).shape == (2, 3)
    assert rng.random(4, dtype=np.float32).dtype == np.float32  # numpy's word path


# ----------------------------------------------------------------- the noise
def test_gaussian_is_normal_with_the_requested_std() -> None:
    sigma, n = 2.5, 100_000
    x = gaussian(seeded_generator(11), n, sigma)
    assert x.dtype == np.float64 and x.shape == (n,)
    assert abs(x.mean()) < 4 * sigma / np.sqrt(n)
    # The std of a sample std is about sigma / sqrt(2n) (0.22% here).
    assert x.std() == pytest.approx(sigma, rel=0.01)
    assert stats.kstest(x / sigma, "norm").pvalue > 1e-3
    # A wrong scale is rejected by the same test (so the test has power).
    assert stats.kstest(x / (1.05 * sigma), "norm").pvalue < 1e-3


def test_gaussian_is_two_box_muller_pairs_from_four_fresh_words() -> None:
    """``std · (x₁ + x₂)/√2``, ``xᵢ = √(-2 ln uᵢ) sin(2π vᵢ)``, the uniforms from the top 53
    bits of the keystream, computed here with Python's math on the reference ChaCha20."""
    shape, sigma = (7, 3), 0.7
    got = gaussian(ChaCha20Generator(KEY, secure=False), shape, sigma)
    n = 21
    w = np.concatenate([block_words(KEY, b) for b in range(-(-4 * n // 8))])[: 4 * n]
    k = [int(v) >> 11 for v in w]
    u, v = [(x + 0.5) * 2.0**-53 for x in k[: 2 * n]], [x * 2.0**-53 for x in k[2 * n :]]
    xs = [
        math.sqrt(-2 * math.log(a)) * math.sin(2 * math.pi * b) for a, b in zip(u, v, strict=True)
    ]
    expected = np.array([sigma * (xs[i] + xs[n + i]) / math.sqrt(2) for i in range(n)])
    np.testing.assert_allclose(got.ravel(), expected, rtol=1e-13, atol=1e-15)
    assert got.shape == shape


def test_gaussian_reads_any_numpy_generators_raw_bits_the_same_way() -> None:
    a = gaussian(np.random.default_rng(5), 6, 1.0)
    words = np.random.default_rng(5).bit_generator.random_raw(24)
    rng = ChaCha20Generator(KEY, secure=False)
    rng.words = lambda count: words[:count]  # type: ignore[method-assign]
    np.testing.assert_array_equal(a, gaussian(rng, 6, 1.0))


def test_standard_normal_is_normal() -> None:
    x = seeded_generator(4).standard_normal(50_001)
    assert x.shape == (50_001,)
    assert stats.kstest(x, "norm").pvalue > 1e-3
    assert stats.kstest(x / 1.05, "norm").pvalue < 1e-3
    assert isinstance(seeded_generator(4).standard_normal(), float)


def test_zero_std_gives_zeros_and_invalid_std_is_refused() -> None:
    assert not gaussian(seeded_generator(0), (2, 3), 0.0).any()
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="standard deviation"):
            gaussian(seeded_generator(0), 3, bad)


# ----------------------------------------------------------------- keys and streams
def test_seeded_keys_are_sha256_of_the_seed_and_streams() -> None:
    key = hashlib.sha256(b"pollinate.shared.privacy.randomness.seeded_generator.v1:5,2,7").digest()
    np.testing.assert_array_equal(seeded_generator(5, 2, 7).words(8), block_words(key, 0))


def test_generators_are_numpy_generators_and_secure_ones_are_keyed_from_the_os() -> None:
    a, b = secure_generator(), secure_generator()
    for rng in (a, b, seeded_generator(3)):
        assert isinstance(rng, np.random.Generator) and isinstance(rng, ChaCha20Generator)
    assert a.secure and not seeded_generator(3).secure
    assert not np.array_equal(a.random(8), b.random(8))
    # numpy's other methods work, from the same stream
    assert sorted(seeded_generator(3).permutation(5).tolist()) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(
        seeded_generator(3).permutation(9), seeded_generator(3).permutation(9)
    )


def test_seeded_generators_repeat_and_streams_differ() -> None:
    np.testing.assert_array_equal(
        seeded_generator(3, 1).random(8), seeded_generator(3, 1).random(8)
    )
    assert not np.array_equal(seeded_generator(3, 1).random(8), seeded_generator(3, 2).random(8))
    assert not np.array_equal(seeded_generator(3).random(8), seeded_generator(4).random(8))
    # the decimal encoding keeps (1, 23) and (12, 3) apart
    assert not np.array_equal(seeded_generator(1, 23).random(8), seeded_generator(12, 3).random(8))
    with pytest.raises(ConfigError):
        seeded_generator(-1)


def test_secret_torch_generator_follows_its_source() -> None:
    assert (
        secret_torch_generator(seeded_generator(1)).initial_seed()
        == secret_torch_generator(seeded_generator(1)).initial_seed()
    )
    seeds = {secret_torch_generator(secure_generator()).initial_seed() for _ in range(4)}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)


def test_descriptions_say_how_each_source_was_seeded() -> None:
    secure = secure_source("noise")
    assert secure.secure
    assert secure.description == (
        "noise: secure (ChaCha20 CSPRNG seeded with 256 bits from os.urandom, unrecorded)"
    )
    seeded = seeded_source("noise", 9, 0)
    assert not seeded.secure
    assert seeded.description == (
        "noise: SEEDED with 9 for reproducibility (simulation only; not private against "
        "anyone who knows the seed)"
    )


# ----------------------------------------------------------------- state
def test_a_secure_state_is_never_exported_and_a_seeded_one_round_trips_json() -> None:
    assert checkpoint_state(secure_source("x")) is None
    source = seeded_source("x", 4, 1)
    source.rng.random(5)
    source.rng.integers(0, 10, size=3, dtype=np.uint32)
    state = json.loads(json.dumps(checkpoint_state(source)))
    restored = seeded_generator(99)
    restored.bit_generator.state = state
    np.testing.assert_array_equal(restored.random(6), source.rng.random(6))
    np.testing.assert_array_equal(restored.integers(0, 10, 4), source.rng.integers(0, 10, 4))
    copy = pickle.loads(pickle.dumps(source.rng))
    np.testing.assert_array_equal(copy.random(3), source.rng.random(3))


def test_a_secure_generator_refuses_to_give_or_take_its_state() -> None:
    rng = secure_generator()
    with pytest.raises(TypeError, match="never exported"):
        _ = rng.bit_generator.state
    with pytest.raises(TypeError, match="never set"):
        rng.bit_generator.state = seeded_generator(1).bit_generator.state
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(rng)


def test_a_foreign_state_is_refused_with_a_value_error() -> None:
    rng = seeded_generator(1)
    with pytest.raises(ValueError, match="PCG64"):
        rng.bit_generator.state = np.random.default_rng(1).bit_generator.state
    with pytest.raises(ValueError, match="32-byte key"):
        rng.bit_generator.state = {
            "bit_generator": "pollinate.ChaCha20", "key": "00", "counter": 0, "buffer": []
        }  # fmt: skip


def test_a_large_draw_is_the_same_stream_as_small_ones() -> None:
    """Requests are cut into 1 MiB calls into OpenSSL; the cuts do not show."""
    big = seeded_generator(8).words(3 * 2**17 + 5)
    rng = seeded_generator(8)
    small = np.concatenate([rng.words(2**10) for _ in range(3 * 2**7 + 1)])
    np.testing.assert_array_equal(big, small[: big.size])


def test_gaussian_goes_in_chunks_of_fresh_words() -> None:
    """Past GAUSSIAN_CHUNK coordinates a second chunk reads its own 4m words (computed
    here from OpenSSL's keystream of the same key and numpy's float64 functions)."""
    n, chunk = GAUSSIAN_CHUNK + 3, GAUSSIAN_CHUNK
    got = gaussian(ChaCha20Generator(KEY, secure=False), n, 1.0)
    enc = Cipher(algorithms.ChaCha20(KEY, bytes(16)), mode=None).encryptor()
    stream = np.frombuffer(enc.update(bytes(32 * chunk + 128)), dtype="<u8")
    expected = []
    for start, m in ((0, chunk), (4 * chunk, 3)):
        k = (stream[start : start + 4 * m] >> np.uint64(11)).astype(np.float64)
        x = np.sqrt(-2 * np.log((k[: 2 * m] + 0.5) * 2.0**-53)) * np.sin(
            2 * np.pi * k[2 * m :] * 2.0**-53
        )
        expected.append((x[:m] + x[m:]) / np.sqrt(2))
    np.testing.assert_allclose(got, np.concatenate(expected), rtol=1e-12, atol=1e-14)
