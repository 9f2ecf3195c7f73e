"""Open a tar that may be compressed (gzip, bzip2, xz), bounding what decompressing it may cost.

A tar member is capped one at a time (``max_member_bytes``), but a compressed tar has a second
cost that no member cap bounds: the bytes decompression produces, to read members or to skip
past them. A gzip bomb -- a tiny ``.tar`` that expands to many GiB of zeros, each member under
the cap -- costs unbounded time per chunk. So every decompressed byte (read, skipped, or read
again after a backward seek) is charged against a budget of ``max_expansion`` times the
compressed size, and reading stops with ``TarExpansionError`` before the budget would be passed.

Why a ratio: real compressed tars of JPEGs expand about 1x, of text about 5-10x; deflate
reaches ~1000x only on runs of one byte, so 200x leaves real data far below and cuts a bomb at
a fifth of its size or less. A tar with a few tiny members expands more (its padding is zeros:
an empty tar.gz is 227x), so the budget is never below ``MIN_BUDGET_BYTES``.

Uncompressed tars are opened as they are: they cost at most their own size.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from typing import BinaryIO

MIN_BUDGET_BYTES = 1 << 20
_OPENERS = ((b"\x1f\x8b", "gzip", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
            (b"BZh", "bzip2", lambda f: bz2.BZ2File(f, mode="rb")),
            (b"\xfd7zXZ\x00", "xz", lambda f: lzma.LZMAFile(f, mode="rb")))


class TarExpansionError(tarfile.ReadError):
    """A compressed tar expands past its budget; what was read before it stands."""


def open_tar(fileobj: BinaryIO, max_expansion: float) -> tarfile.TarFile:
    """``tarfile.open(fileobj=...)`` for a plain or compressed tar (what ``mode='r:*'`` reads),
    with a compressed one's decompressed bytes bounded as the module docstring says. ``fileobj``
    is seekable (its size is the compressed size). Errors are ``tarfile.TarError``
    (``TarExpansionError`` past the budget), ``OSError`` or ``EOFError``."""
    compressed_size = fileobj.seek(0, io.SEEK_END)
    fileobj.seek(0)
    head = fileobj.read(6)
    fileobj.seek(0)
    for magic, name, opener in _OPENERS:
        if head.startswith(magic):
            budget = max(int(compressed_size * max_expansion), MIN_BUDGET_BYTES)
            why = (f"{name}-compressed tar expands past max_tar_expansion={max_expansion:g} x its {compressed_size} "
                   f"compressed bytes ({budget} bytes)")
            return tarfile.open(fileobj=BudgetedStream(opener(fileobj), budget, why), mode="r:")
    return tarfile.open(fileobj=fileobj, mode="r:")


def is_compressed(fileobj: BinaryIO) -> bool:
    """Whether ``open_tar`` would decompress ``fileobj`` (seekable; left at its start)."""
    fileobj.seek(0)
    head = fileobj.read(6)
    fileobj.seek(0)
    return any(head.startswith(magic) for magic, _, _ in _OPENERS)


def check_complete(tf: tarfile.TarFile) -> None:
    """After iterating ``tf``: raise ``tarfile.ReadError`` unless the archive ended as a whole one
    does. tarfile stops quietly at a cut or garbled header after the first member; a complete
    archive has a zero (end-of-archive) block where it stopped. A compressed one must also
    decompress to its end with a matching checksum (a flipped byte shows only there)."""
    tf.fileobj.seek(tf.offset)
    if tf.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise tarfile.ReadError(f"no end-of-archive block at byte {tf.offset} (truncated or garbled header)")
    if isinstance(tf.fileobj, BudgetedStream):
        tf.fileobj.drain()


class BudgetedStream:
    """A decompressing file object, seen by tarfile as a plain seekable file, whose decompressed
    bytes are charged against ``budget``: every byte decompressed, to read or to skip (a forward
    seek decompresses what it skips; a backward one decompresses again from the start, as gzip,
    bz2 and lzma files do), and ``TarExpansionError`` before one byte more. Seeks are lazy, and
    the last ``TAIL`` bytes are kept: tarfile re-reads the header block it just read (the
    end-of-archive check does too), which then costs nothing."""

    TAIL = 1 << 16

    def __init__(self, raw: BinaryIO, budget: int, why: str):
        self._raw, self._budget, self._why = raw, budget, why
        self._pos = 0      # where the reader is
        self._raw_pos = 0  # where the decompressor is
        self._tail = b""   # the bytes just before _raw_pos
        self.spent = 0

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a compressed tar cannot seek from its end")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        self._pos = offset
        return offset

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        out = b""
        tail_start = self._raw_pos - len(self._tail)
        if tail_start <= self._pos < self._raw_pos:
            out = self._tail[self._pos - tail_start:][:size]
            self._pos += len(out)
            size -= len(out)
            if not size:
                return out
        if self._pos < self._raw_pos:  # before the tail: decompress again from the start
            self._decompress(self._raw.seek, 0)
            self._raw_pos, self._tail = 0, b""
        while self._raw_pos < self._pos:  # a forward seek: decompress and drop
            if not self._produce(min(self._pos - self._raw_pos, 1 << 20)):
                return out  # sought past the end
        data = self._produce(size)
        self._pos = self._raw_pos
        return out + data

    def drain(self) -> None:
        """Decompress to the end (charged): gzip and xz check their checksums only there, and
        tarfile stops reading at the end-of-archive block, before it."""
        self._pos = max(self._pos, self._raw_pos)
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        self._raw.close()

    def _produce(self, size: int) -> bytes:
        """Up to ``size`` more decompressed bytes, charged; never asks for more than the budget
        has left plus one, so a header claiming GiBs is refused before they are allocated."""
        room = self._budget - self.spent
        data = self._decompress(self._raw.read, min(size, room + 1))
        if len(data) > room:
            raise TarExpansionError(f"{self._why}; stopped at byte {self._raw_pos + room}")
        self.spent += len(data)
        self._raw_pos += len(data)
        self._tail = data[-self.TAIL:] if len(data) >= self.TAIL else (self._tail + data)[-self.TAIL:]
        return data

    @staticmethod
    def _decompress(call, arg):
        try:
            return call(arg)
        except (zlib.error, lzma.LZMAError) as e:  # gzip's and xz's damaged-data errors are not OSError
            raise tarfile.ReadError(f"damaged compressed data: {type(e).__name__}: {e}") from None
