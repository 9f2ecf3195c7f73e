"""Normalised ustar output, byte for byte what ``tarfile`` writes, without its per-member cost.

Why: a shard of 1,000 samples has 3,000 members, and ``tarfile.addfile`` (a ``TarInfo`` copied,
every header field formatted, data copied through a stream buffer) was 60% of a shard writer's
time. Every member here has the same normalised header (mode 0644, uid/gid 0, mtime 0, no user
names), so the header is a template with the name, the size and the checksum filled in. Names
the template cannot hold (over 100 bytes, non-ASCII) and sizes over 8 GiB take ``tarfile``'s own
header code, so the output is always what ``tarfile.open(mode="w|", format=USTAR_FORMAT)`` with
``normalised_tarinfo`` members writes (tests/test_tar_write.py compares them).
"""
from __future__ import annotations

import tarfile
from typing import BinaryIO

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_MAX_SIZE = 8**11 - 1


def normalised_tarinfo(name: str, size: int) -> tarfile.TarInfo:
    """The header every sailcurate shard member gets: rerun-stable, owner-free."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti


_TEMPLATE = bytearray(normalised_tarinfo("x", 0).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))


def member_header(name: str, size: int) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or not raw.isascii() or size > _MAX_SIZE:
        return normalised_tarinfo(name, size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    h = bytearray(_TEMPLATE)
    h[0:100] = raw.ljust(100, b"\0")
    h[124:136] = b"%011o\0" % size
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


class TarWriter:
    """Appends members to ``out``; ``close`` writes the end-of-archive blocks and record padding."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.offset = 0

    def add(self, name: str, data: bytes) -> None:
        pad = -len(data) % BLOCK
        self.out.write(member_header(name, len(data)))
        self.out.write(data)
        if pad:
            self.out.write(bytes(pad))
        self.offset += BLOCK + len(data) + pad

    def add_file(self, name: str, size: int, f: BinaryIO, chunk: int = 1 << 20) -> None:
        """A member copied from a file object of ``size`` bytes (a video too large to hold)."""
        self.out.write(member_header(name, size))
        left = size
        while left:
            piece = f.read(min(chunk, left))
            if not piece:
                raise OSError(f"{name}: source ended {left} bytes short of its {size}")
            self.out.write(piece)
            left -= len(piece)
        pad = -size % BLOCK
        if pad:
            self.out.write(bytes(pad))
        self.offset += BLOCK + size + pad

    def close(self) -> None:
        self.out.write(bytes(2 * BLOCK))
        self.offset += 2 * BLOCK
        rest = -self.offset % RECORD
        if rest:
            self.out.write(bytes(rest))
            self.offset += rest

    def __enter__(self) -> "TarWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
