"""Shard tars come out byte for byte as tarfile writes them (stages/tar_write.py).

The fast writer fills a header template; tarfile's ``USTAR_FORMAT`` stream writer with the
normalised member header is the reference, for short and long, ASCII and non-ASCII names, empty
and block-sized members, members copied from files, and archives of every length mod a record.
"""
from __future__ import annotations

import io
import random
import tarfile

import pytest

from stages.tar_write import TarWriter, member_header, normalised_tarinfo


def _reference(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            tf.addfile(normalised_tarinfo(name, len(data)), io.BytesIO(data))
    return buf.getvalue()


def _fast(members: list[tuple[str, bytes]], as_files: bool = False) -> bytes:
    buf = io.BytesIO()
    with TarWriter(buf) as tw:
        for name, data in members:
            if as_files:
                tw.add_file(name, len(data), io.BytesIO(data), chunk=700)
            else:
                tw.add(name, data)
    return buf.getvalue()


NAMES = ["a.jpg", "0123456789abcdef0123456789abcdef.json", "k" * 100, "d" * 60 + "/" + "e" * 60 + ".txt",
         "caf\u00e9.jpg", "x" * 97 + ".jp"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 70_000])
def test_each_header_is_tarfiles(name, size):
    assert member_header(name, size) == normalised_tarinfo(name, size).tobuf(
        tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


@pytest.mark.parametrize("as_files", [False, True])
def test_whole_archives_are_tarfiles_at_every_length(as_files):
    rng = random.Random(0)
    for n in range(0, 40):
        members = [(f"{i:06d}.{rng.choice(['jpg', 'txt', 'json'])}", rng.randbytes(rng.choice([0, 10, 512, 3000, 9000])))
                   for i in range(n)]
        assert _fast(members, as_files) == _reference(members)


def test_a_file_shorter_than_its_size_is_an_error():
    with pytest.raises(OSError, match="short"):
        TarWriter(io.BytesIO()).add_file("v.mp4", 100, io.BytesIO(b"x" * 10))


def test_a_name_tarfile_refuses_is_refused_alike():
    with pytest.raises(ValueError):
        member_header("x" * 101, 1)
