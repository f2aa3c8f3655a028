"""The native rANS coder: exact round trips, escapes, multi-call streams, and garbage that never crashes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.cdf import pmf_to_quantized_cdf
from zoo.coder import CdfTables, Decoder, Encoder, decode, encode
from zoo.errors import BitstreamError, TablesMissingError


def _tables(rng: np.random.Generator, n_tables: int = 5) -> CdfTables:
    rows, offsets = [], []
    for _ in range(n_tables):
        k = int(rng.integers(1, 40))
        pmf = rng.random(k) ** 3 + 1e-7
        pmf = pmf / pmf.sum() * 0.999
        rows.append(pmf_to_quantized_cdf(pmf, 0.001))
        offsets.append(int(rng.integers(-20, 5)))
    width = max(len(r) for r in rows)
    cdf = np.zeros((n_tables, width), dtype=np.int32)
    for i, r in enumerate(rows):
        cdf[i, : len(r)] = r
    return CdfTables(cdf, [len(r) for r in rows], offsets)


def _symbols(rng: np.random.Generator, tables: CdfTables, n: int) -> tuple[np.ndarray, np.ndarray]:
    indexes = rng.integers(0, len(tables), n).astype(np.int32)
    span = tables.lengths[indexes] - 2
    symbols = (rng.integers(0, 1 << 30, n) % span + tables.offsets[indexes]).astype(np.int32)
    return symbols, indexes


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 3000))
def test_round_trip_random_tables(seed, n):
    rng = np.random.default_rng(seed)
    tables = _tables(rng)
    symbols, indexes = _symbols(rng, tables, n)
    data = encode(symbols, indexes, tables)
    assert np.array_equal(decode(data, indexes, tables), symbols)


def test_outliers_are_escaped_exactly():
    rng = np.random.default_rng(1)
    tables = _tables(rng)
    symbols, indexes = _symbols(rng, tables, 1000)
    extremes = [2**31 - 1, -(2**31), 10**6, -(10**6), 12345, -7]
    symbols[: len(extremes)] = extremes
    data = encode(symbols, indexes, tables)
    assert np.array_equal(decode(data, indexes, tables), symbols)


def test_multi_call_decoder_and_mixed_tables_in_one_stream():
    rng = np.random.default_rng(2)
    t1, t2 = _tables(rng, 3), _tables(rng, 7)
    s1, i1 = _symbols(rng, t1, 500)
    s2, i2 = _symbols(rng, t2, 300)
    enc = Encoder()
    enc.push(s1[:200], i1[:200], t1)
    enc.push(s2, i2, t2)
    enc.push(s1[200:], i1[200:], t1)
    data = enc.flush()
    dec = Decoder(data)
    got = [dec.decode(i1[:200], t1)]
    got += [dec.decode(i2[k : k + 1], t2) for k in range(len(i2))]  # one symbol per call, as AR models do
    got.append(dec.decode(i1[200:], t1))
    assert dec.finished()
    assert np.array_equal(np.concatenate(got), np.concatenate([s1[:200], s2, s1[200:]]))


def test_size_is_close_to_the_ideal():
    rng = np.random.default_rng(3)
    pmf = np.exp(-0.5 * (np.arange(-30, 31) / 4.0) ** 2)
    pmf /= pmf.sum()
    row = pmf_to_quantized_cdf(pmf * (1 - 1e-6), 1e-6)
    tables = CdfTables(row[None], [len(row)], [-30])
    symbols = np.clip(np.round(rng.normal(0, 4.0, 200_000)), -30, 30).astype(np.int32)
    data = encode(symbols, np.zeros_like(symbols), tables)
    freqs = np.diff(row.astype(np.float64))[:-1] / 65536
    ideal = -np.log2(freqs[symbols + 30]).sum() / 8
    assert len(data) <= ideal * 1.005 + 16


def test_empty_input():
    tables = _tables(np.random.default_rng(4))
    empty = np.zeros(0, dtype=np.int32)
    data = encode(empty, empty, tables)
    assert decode(data, empty, tables).size == 0


def test_garbage_never_crashes():
    rng = np.random.default_rng(5)
    tables = _tables(rng)
    symbols, indexes = _symbols(rng, tables, 2000)
    data = encode(symbols, indexes, tables)
    candidates = [
        b"",
        data[:3],
        data[:-4],
        data[: len(data) // 2],
        bytes(rng.integers(0, 256, 64, dtype=np.uint8)),
    ]
    for _ in range(200):
        buf = bytearray(data)
        buf[int(rng.integers(0, len(buf)))] ^= 1 << int(rng.integers(0, 8))
        candidates.append(bytes(buf))
    for junk in candidates:
        try:
            out = decode(junk, indexes, tables)
        except BitstreamError:
            continue
        assert out.shape == indexes.shape and out.dtype == np.int32


def test_bad_indexes_and_tables_are_refused():
    rng = np.random.default_rng(6)
    tables = _tables(rng, 3)
    with pytest.raises(ValueError, match="index"):
        encode(np.zeros(4, np.int32), np.array([0, 1, 3, 0], np.int32), tables)
    with pytest.raises(TablesMissingError):
        CdfTables(np.zeros((0, 0), np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32))
    with pytest.raises(ValueError, match="strictly increasing"):
        CdfTables(np.array([[0, 5, 5, 65536]], np.int32), [4], [0])
    with pytest.raises(ValueError, match="integer"):
        encode(np.zeros(2, np.float32), np.zeros(2, np.int32), tables)


def test_a_failed_push_adds_nothing():
    rng = np.random.default_rng(7)
    tables = _tables(rng, 3)
    symbols, indexes = _symbols(rng, tables, 500)
    enc = Encoder()
    enc.push(symbols, indexes, tables)
    bad = indexes.copy()
    bad[300] = 99  # the first 300 symbols are valid: none of them may stay behind
    with pytest.raises(ValueError, match="index"):
        enc.push(symbols, bad, tables)
    assert enc.flush() == encode(symbols, indexes, tables)


def _uniform_table(n: int = 256) -> CdfTables:
    row = np.arange(n + 2, dtype=np.int64) * 65536 // (n + 1)
    return CdfTables(row[None].astype(np.int32), [n + 2], [0])


def test_one_encoder_shared_by_8_threads_loses_and_mixes_nothing():
    # Pushes from 8 threads interleave with flushes: every flushed stream must hold whole pushes, and every
    # pushed symbol must come out of exactly one flush (a push during a flush used to be dropped or to touch
    # the buffer the flush was reading).
    tables, chunk, rounds = _uniform_table(), 20_000, 12
    enc, streams, lock = Encoder(), [], threading.Lock()
    payload = {t: np.full(chunk, t * 31 % 256, np.int32) for t in range(8)}
    idx = np.zeros(chunk, np.int32)

    def work(t: int) -> None:
        for r in range(rounds):
            enc.push(payload[t], idx, tables)
            if r % 3 == t % 3:
                data = enc.flush()
                with lock:
                    streams.append(data)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    streams.append(enc.flush())
    counts = dict.fromkeys(range(8), 0)
    by_value = {int(v[0]): t for t, v in payload.items()}
    for data in streams:
        dec = Decoder(data)
        while not dec.finished():
            got = dec.decode(idx, tables)
            assert np.all(got == got[0]) and int(got[0]) in by_value, "a flushed stream mixes pushes"
            counts[by_value[int(got[0])]] += 1
    assert counts == dict.fromkeys(range(8), rounds)


def test_one_decoder_shared_by_8_threads_decodes_whole_calls():
    tables, chunk, n_chunks = _uniform_table(), 5_000, 64
    rng = np.random.default_rng(8)
    symbols = rng.integers(0, 256, chunk * n_chunks).astype(np.int32)
    idx = np.zeros(chunk, np.int32)
    dec = Decoder(encode(symbols, np.zeros_like(symbols), tables))
    chunks = {symbols[k * chunk : (k + 1) * chunk].tobytes(): k for k in range(n_chunks)}
    seen: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(n_chunks // 8):
            got = dec.decode(idx, tables)
            with lock:
                seen.append(chunks.get(got.tobytes(), -1))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(seen) == list(range(n_chunks))
    assert dec.finished()
