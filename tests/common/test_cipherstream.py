"""Tests for the streaming content encryption format (common.cipherstream)."""
import hashlib
import os
import time
import tracemalloc

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common import cipherstream
from common.cipherstream import (
    CHUNK_SIZE,
    HEADER_SIZE,
    TAG_SIZE,
    ContentEncryptor,
    IntegrityError,
    chunk_offset,
    chunk_position,
    ciphertext_size,
    decrypt,
    decrypt_range,
    read_header,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(32, 64))
FILE_ID = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
OTHER_FILE_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
PREFIX = bytes.fromhex("a0a1a2a3a4a5a6")
SMALL = 16  # a small chunk size, so a few bytes make many chunks
FRAME = SMALL + TAG_SIZE
FOX = b"The quick brown fox jumps over the lazy dog"

# Computed once with reference_encrypt below (raw AESGCM, written from the format description),
# then pinned so that neither implementation can drift without a test failing.
FOX_CIPHERTEXT = bytes.fromhex(
    "53444346010000000700000010a0a1a2a3a4a5a65eb97989e7212c5e0703a6f2f677384ba0493130"
    "27c59d2840d2cae3556f36fd378d6fe7e7499bff93add102a8508e449784436ab72b8803c7e3ef67"
    "ec25404289c8a18297946664bba0dbb660451a46ae9ff02cf1219e379afe7f"
)
EMPTY_CIPHERTEXT = bytes.fromhex(
    "53444346010000000700000010a0a1a2a3a4a5a6871fe96ae27e4e03fb6eeb7161626236"
)


def reference_encrypt(key, file_id, key_version, prefix, chunk_size, plaintext):
    """An independent implementation of format version 1 with one-shot AESGCM calls."""
    header = (
        b"SDCF" + bytes([1]) + key_version.to_bytes(4, "big") + chunk_size.to_bytes(4, "big")
        + prefix
    )
    aead = AESGCM(key)
    pieces = [plaintext[i : i + chunk_size] for i in range(0, len(plaintext), chunk_size)]
    pieces = pieces or [b""]
    out = [header]
    for index, piece in enumerate(pieces):
        position = index.to_bytes(4, "big") + bytes([index == len(pieces) - 1])
        aad = header + len(file_id).to_bytes(2, "big") + file_id + position
        out.append(aead.encrypt(prefix + position, piece, aad))
    return b"".join(out)


def encrypt(plaintext, *, key=KEY, file_id=FILE_ID, chunk_size=SMALL, piece=None, prefix=PREFIX):
    encryptor = ContentEncryptor(key, file_id, 7, chunk_size=chunk_size, nonce_prefix=prefix)
    piece = piece or max(1, len(plaintext))
    starts = range(0, len(plaintext), piece)
    parts = [bytes(encryptor.update(plaintext[i : i + piece])) for i in starts]
    parts.append(bytes(encryptor.finalize()))
    return b"".join(parts), encryptor


def blocks(data, size=5):
    return [data[i : i + size] for i in range(0, len(data), size)]


def released_before_failure(plaintext_iterator):
    """Drain a decryption that must fail; return the plaintext it released before failing."""
    released = []
    with pytest.raises(IntegrityError):
        for piece in plaintext_iterator:
            released.append(piece)
    return b"".join(released)


def flip(data, position):
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


PLAIN = bytes(range(256))[: 4 * SMALL + 5]  # five chunks, the last one short
CIPHER = encrypt(PLAIN)[0]


# --- known answers and round trips -----------------------------------------------------------


def test_known_answer_matches_the_pinned_ciphertext():
    assert encrypt(FOX)[0] == FOX_CIPHERTEXT
    assert encrypt(b"")[0] == EMPTY_CIPHERTEXT


def test_known_answer_matches_the_independent_implementation():
    assert reference_encrypt(KEY, FILE_ID, 7, PREFIX, SMALL, FOX) == FOX_CIPHERTEXT
    assert reference_encrypt(KEY, FILE_ID, 7, PREFIX, SMALL, b"") == EMPTY_CIPHERTEXT
    plain = os.urandom(1000)
    assert encrypt(plain, piece=37)[0] == reference_encrypt(KEY, FILE_ID, 7, PREFIX, SMALL, plain)


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL + 5])
@pytest.mark.parametrize("piece", [1, 7, SMALL, 100])
def test_round_trip(size, piece):
    plain = os.urandom(size)
    cipher, encryptor = encrypt(plain, piece=piece, prefix=None)
    assert len(cipher) == ciphertext_size(size, SMALL) == encryptor.cipher_size
    assert encryptor.plain_size == size
    assert b"".join(decrypt(blocks(cipher, 3), KEY, FILE_ID)) == plain
    assert b"".join(decrypt([cipher], KEY, FILE_ID)) == plain


def test_round_trip_with_the_default_chunk_size_and_threaded_hashing():
    plain = os.urandom(3 * CHUNK_SIZE + 12345)
    cipher, encryptor = encrypt(plain, chunk_size=CHUNK_SIZE, piece=100_000)
    assert len(cipher) == ciphertext_size(len(plain))
    out = decrypt(blocks(cipher, 65_537), KEY, FILE_ID, expected_md5=encryptor.md5,
                  expected_sha256=encryptor.sha256)
    assert b"".join(out) == plain


def test_the_nonce_prefix_is_random_per_file():
    assert encrypt(FOX, prefix=None)[0] != encrypt(FOX, prefix=None)[0]


def test_header_records_key_version_and_chunk_size():
    encryptor = ContentEncryptor(KEY, FILE_ID, 4_000_000_000, chunk_size=SMALL)
    header = read_header(bytes(encryptor.update(b"abc")) + bytes(encryptor.finalize()))
    assert (header.version, header.key_version, header.chunk_size) == (1, 4_000_000_000, SMALL)
    assert header.length == HEADER_SIZE == len(encryptor.header)
    assert len(header.prefix) == 7


@pytest.mark.parametrize(
    "bad",
    [b"", CIPHER[: HEADER_SIZE - 1], b"XDCF" + CIPHER[4:], CIPHER[:4] + b"\x02" + CIPHER[5:],
     CIPHER[:9] + b"\x00\x00\x00\x00" + CIPHER[13:],
     CIPHER[:9] + b"\x7f\x00\x00\x00" + CIPHER[13:]],
    ids=["empty", "short", "magic", "version", "chunk-size-zero", "chunk-size-huge"],
)
def test_read_header_rejects_what_is_not_a_header(bad):
    with pytest.raises(IntegrityError):
        read_header(bad)


def test_sizes_and_offsets_are_pure_functions_of_the_plaintext_size():
    assert ciphertext_size(0, SMALL) == HEADER_SIZE + TAG_SIZE
    assert ciphertext_size(SMALL, SMALL) == HEADER_SIZE + FRAME
    assert ciphertext_size(SMALL + 1, SMALL) == HEADER_SIZE + FRAME + 1 + TAG_SIZE
    assert chunk_offset(3, SMALL) == HEADER_SIZE + 3 * FRAME
    position = chunk_position(2 * SMALL + 5, SMALL)
    assert (position.index, position.cipher_start, position.skip) == (2, HEADER_SIZE + 2 * FRAME, 5)


def test_update_buffers_at_most_one_chunk():
    encryptor = ContentEncryptor(KEY, FILE_ID, 1, chunk_size=SMALL)
    assert len(encryptor.update(b"x" * SMALL)) == HEADER_SIZE  # full, but maybe the last one
    assert len(encryptor.update(b"x")) == FRAME
    assert len(encryptor.update(b"x" * (3 * SMALL))) == 3 * FRAME
    assert len(encryptor.finalize()) == 1 + TAG_SIZE


def test_encryptor_refuses_use_after_finalize():
    encryptor = ContentEncryptor(KEY, FILE_ID, 1)
    with pytest.raises(RuntimeError):
        encryptor.md5
    encryptor.finalize()
    with pytest.raises(RuntimeError):
        encryptor.update(b"more")


def test_decrypt_from_a_later_chunk_with_the_header_apart():
    later = decrypt([CIPHER[chunk_offset(2, SMALL) :]], KEY, FILE_ID, header=CIPHER[:HEADER_SIZE],
                    first_chunk=2)
    assert b"".join(later) == PLAIN[2 * SMALL :]


# --- tampering: IntegrityError, and nothing released from the bad chunk on ------------------


def chunk_start(index):
    return chunk_offset(index, SMALL)


@pytest.mark.parametrize("position", range(HEADER_SIZE))
def test_flipped_bit_in_header(position):
    assert released_before_failure(decrypt([flip(CIPHER, position)], KEY, FILE_ID)) == b""


def test_flipped_bit_in_a_chunk_body():
    tampered = flip(CIPHER, chunk_start(2) + 3)
    assert released_before_failure(decrypt(blocks(tampered), KEY, FILE_ID)) == PLAIN[: 2 * SMALL]


def test_flipped_bit_in_a_tag():
    tampered = flip(CIPHER, chunk_start(2) - 1)  # last byte of chunk 1's tag
    assert released_before_failure(decrypt(blocks(tampered), KEY, FILE_ID)) == PLAIN[:SMALL]


def test_flipped_bit_in_the_final_chunk():
    tampered = flip(CIPHER, len(CIPHER) - 20)
    assert released_before_failure(decrypt(blocks(tampered), KEY, FILE_ID)) == PLAIN[: 4 * SMALL]


@pytest.mark.parametrize("cut", range(HEADER_SIZE, len(CIPHER)))
def test_truncation_anywhere(cut):
    # A cut at a chunk boundary drops the final chunk; a cut inside a chunk leaves it short.
    released = released_before_failure(decrypt(blocks(CIPHER[:cut]), KEY, FILE_ID))
    complete_chunks_before_the_last = max(0, (cut - HEADER_SIZE - 1) // FRAME)
    assert released == PLAIN[: SMALL * complete_chunks_before_the_last]


@pytest.mark.parametrize("cut", range(HEADER_SIZE))
def test_truncation_inside_the_header(cut):
    assert released_before_failure(decrypt([CIPHER[:cut]], KEY, FILE_ID)) == b""


def test_two_chunks_swapped():
    one, two = CIPHER[chunk_start(1) : chunk_start(2)], CIPHER[chunk_start(2) : chunk_start(3)]
    swapped = CIPHER[: chunk_start(1)] + two + one + CIPHER[chunk_start(3) :]
    assert released_before_failure(decrypt(blocks(swapped), KEY, FILE_ID)) == PLAIN[:SMALL]


def test_a_chunk_duplicated():
    one = CIPHER[chunk_start(1) : chunk_start(2)]
    duplicated = CIPHER[: chunk_start(2)] + one + CIPHER[chunk_start(2) :]
    assert released_before_failure(decrypt(blocks(duplicated), KEY, FILE_ID)) == PLAIN[: 2 * SMALL]


@pytest.mark.parametrize("extra", [b"\x00", b"x" * FRAME, CIPHER[chunk_start(1) : chunk_start(2)]])
def test_bytes_after_a_short_final_chunk(extra):
    released = released_before_failure(decrypt(blocks(CIPHER + extra), KEY, FILE_ID))
    assert released == PLAIN[: 4 * SMALL]


def test_bytes_after_a_full_final_chunk():
    plain = PLAIN[: 4 * SMALL]
    cipher = encrypt(plain)[0]
    released = released_before_failure(decrypt(blocks(cipher + b"\x00"), KEY, FILE_ID))
    assert released == plain[: 3 * SMALL]


def test_ciphertexts_swapped_between_files():
    # Same key, same nonce prefix, same key version: only the file id tells them apart.
    other_plain = os.urandom(len(PLAIN))
    other = encrypt(other_plain, file_id=OTHER_FILE_ID)[0]
    assert released_before_failure(decrypt([CIPHER], KEY, OTHER_FILE_ID)) == b""
    one = CIPHER[chunk_start(1) : chunk_start(2)]
    spliced = other[: chunk_start(1)] + one + other[chunk_start(2) :]
    released = released_before_failure(decrypt(blocks(spliced), KEY, OTHER_FILE_ID))
    assert released == other_plain[:SMALL]


def test_wrong_key():
    # As when a wrapped file key is swapped between two files' rows.
    assert released_before_failure(decrypt(blocks(CIPHER), OTHER_KEY, FILE_ID)) == b""


def test_wrong_header_passed_apart():
    other_header = encrypt(PLAIN, prefix=None)[0][:HEADER_SIZE]
    later = decrypt([CIPHER[chunk_start(2) :]], KEY, FILE_ID, header=other_header, first_chunk=2)
    assert released_before_failure(later) == b""


def test_nothing_at_all():
    assert released_before_failure(decrypt([], KEY, FILE_ID)) == b""
    assert released_before_failure(decrypt([CIPHER[:HEADER_SIZE]], KEY, FILE_ID)) == b""


# --- ranged reads ------------------------------------------------------------------------------


def recording_fetch(cipher, calls):
    def fetch(start, end):
        calls.append((start, end))
        return blocks(cipher[start:end], 7)

    return fetch


@pytest.mark.parametrize("size", [0, 3 * SMALL, 3 * SMALL + 5])
def test_every_range_equals_the_slice(size):
    plain = os.urandom(size)
    cipher = encrypt(plain)[0]
    header = cipher[:HEADER_SIZE]
    for offset in range(size + 1):
        for length in [None, *range(size - offset + 3)]:
            calls = []
            got = decrypt_range(KEY, FILE_ID, header, recording_fetch(cipher, calls),
                                offset=offset, length=length)
            wanted = plain[offset:] if length is None else plain[offset : offset + length]
            assert b"".join(got) == wanted, (offset, length)
            if length != 0:
                assert calls[0][0] == chunk_position(offset, SMALL).cipher_start


def test_a_bounded_range_fetches_only_its_chunks_and_one_byte_more():
    calls = []
    got = decrypt_range(KEY, FILE_ID, CIPHER[:HEADER_SIZE], recording_fetch(CIPHER, calls),
                        offset=SMALL + 3, length=SMALL)
    assert b"".join(got) == PLAIN[SMALL + 3 : 2 * SMALL + 3]
    assert calls == [(chunk_start(1), chunk_start(3) + 1)]


def test_a_range_in_a_tampered_chunk_fails_and_releases_nothing():
    tampered = flip(CIPHER, chunk_start(2) + 1)
    got = decrypt_range(KEY, FILE_ID, CIPHER[:HEADER_SIZE], recording_fetch(tampered, []),
                        offset=2 * SMALL + 1, length=3)
    assert released_before_failure(got) == b""


def test_a_range_ending_where_the_object_was_cut_fails():
    # Chunk 1 is not final; with the rest cut off it must not pass for the last chunk.
    cut = CIPHER[: chunk_start(2)]
    got = decrypt_range(KEY, FILE_ID, CIPHER[:HEADER_SIZE], recording_fetch(cut, []),
                        offset=SMALL, length=SMALL)
    assert released_before_failure(got) == b""


def test_an_offset_at_the_end_of_a_cut_object_fails():
    plain = PLAIN[: 4 * SMALL]
    cut = encrypt(plain)[0][: chunk_start(3)]  # the final chunk dropped
    got = decrypt_range(KEY, FILE_ID, cut[:HEADER_SIZE], recording_fetch(cut, []), offset=3 * SMALL)
    assert released_before_failure(got) == b""


# --- fingerprints ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 5, CHUNK_SIZE, 2 * CHUNK_SIZE + 70_001])
def test_fingerprints_equal_hashlib_over_the_same_bytes(size):
    plain = os.urandom(size)
    encryptor = ContentEncryptor(KEY, FILE_ID, 1)
    parts = []
    for start in range(0, size, 90_000):
        buffer = bytearray(plain[start : start + 90_000])
        parts.append(bytes(encryptor.update(buffer)))
        buffer[:] = bytes(len(buffer))  # the caller reuses its buffer: hashing must not see it
    parts.append(bytes(encryptor.finalize()))
    cipher = b"".join(parts)
    assert encryptor.md5 == hashlib.md5(plain).digest()
    assert encryptor.sha256 == hashlib.sha256(plain).digest()
    assert encryptor.cipher_sha256 == hashlib.sha256(cipher).digest()
    assert (encryptor.plain_size, encryptor.cipher_size) == (size, len(cipher))


@pytest.fixture
def slow_hashing(monkeypatch):
    """A hashing thread that lags far behind, to make races with it certain."""
    hash_views = cipherstream.HashLane.update

    def slow_hash_views(lane, views):
        time.sleep(0.01)
        hash_views(lane, views)

    monkeypatch.setattr(cipherstream.HashLane, "update", slow_hash_views)


def test_fingerprints_survive_a_lagging_hash_over_small_updates(slow_hashing):
    # Chunks then pass through the encryptor's own buffer, which must not be refilled while
    # MD5 may still be reading it.
    plain = os.urandom(3 * 1024 * 1024)
    encryptor = ContentEncryptor(KEY, FILE_ID, 1)
    for start in range(0, len(plain), 50_000):
        encryptor.update(plain[start : start + 50_000])
    encryptor.finalize()
    assert encryptor.md5 == hashlib.md5(plain).digest()


def test_fingerprints_survive_a_caller_reusing_one_large_buffer(slow_hashing):
    # As a reader calling readinto(): MD5 runs behind on a worker thread, so update() must
    # not leave it reading a buffer the caller is about to overwrite.
    plain = os.urandom(8 * 1024 * 1024)
    buffer = bytearray(2 * 1024 * 1024)
    encryptor = ContentEncryptor(KEY, FILE_ID, 1)
    for start in range(0, len(plain), len(buffer)):
        buffer[:] = plain[start : start + len(buffer)]
        encryptor.update(buffer)
    buffer[:] = bytes(len(buffer))
    encryptor.finalize()
    assert encryptor.md5 == hashlib.md5(plain).digest()
    assert encryptor.sha256 == hashlib.sha256(plain).digest()


@pytest.mark.parametrize("wrong", ["md5", "sha256"])
def test_whole_read_verifier_holds_back_the_final_chunk_on_a_mismatch(wrong):
    expected = {"md5": hashlib.md5(PLAIN).digest(), "sha256": hashlib.sha256(PLAIN).digest()}
    assert b"".join(decrypt([CIPHER], KEY, FILE_ID, expected_md5=expected["md5"],
                            expected_sha256=expected["sha256"])) == PLAIN
    expected[wrong] = bytes(len(expected[wrong]))
    verified = decrypt(blocks(CIPHER), KEY, FILE_ID, expected_md5=expected["md5"],
                       expected_sha256=expected["sha256"])
    assert released_before_failure(verified) == PLAIN[: 4 * SMALL]


def test_whole_read_verifier_on_large_content():
    plain = os.urandom(2 * CHUNK_SIZE + 3)
    cipher, encryptor = encrypt(plain, chunk_size=CHUNK_SIZE)
    verified = decrypt(blocks(cipher, 100_000), KEY, FILE_ID,
                       expected_md5=hashlib.md5(b"").digest(), expected_sha256=encryptor.sha256)
    assert released_before_failure(verified) == plain[: 2 * CHUNK_SIZE]


# --- memory ------------------------------------------------------------------------------------


def test_streaming_64_mib_keeps_memory_to_a_few_chunks():
    piece = os.urandom(1024 * 1024)
    warm = ContentEncryptor(KEY, FILE_ID, 1)  # start the hashing threads outside the trace
    warm.update(piece)
    warm.finalize()
    encryptor = ContentEncryptor(KEY, FILE_ID, 1)
    tracemalloc.start()
    try:
        for _ in range(64):
            out = encryptor.update(piece)
        out = encryptor.finalize()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert encryptor.plain_size == 64 * len(piece)
    # Two outputs of one piece each (the last and the one being built) and two chunk buffers.
    assert peak < 2 * len(piece) + 4 * CHUNK_SIZE, peak
    del out
