"""The fast tar header walk (stages/tar_fast.py) answers as tarfile does, or hands the tar back.

For every archive below, ``plain_members`` either returns None (ingest then reads it with
tarfile) or exactly the names, sizes and data offsets tarfile lists for a complete archive.
The walk must also take the common case: img2dataset-style tars of plain files.
"""
from __future__ import annotations

import io
import random
import tarfile

import pytest

from stages.tar_fast import plain_members
from stages.tar_stream import check_complete


def _tar(members: list[tuple[str, bytes]], fmt=tarfile.USTAR_FORMAT, extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        if extra:
            extra(tf)
    return buf.getvalue()


def _tarfile_view(data: bytes):
    """What tarfile says: [(name, size, offset_data)] of a complete all-regular archive, else None."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            ms = list(tf)
            check_complete(tf)
    except (tarfile.TarError, EOFError, OSError):
        return None
    if not all(m.isfile() and not m.sparse for m in ms):
        return None
    return [(m.name, m.size, m.offset_data) for m in ms]


def _agrees(data: bytes) -> list | None:
    fast = plain_members(io.BytesIO(data))
    if fast is not None:
        assert [(m.name, m.size, m.offset_data) for m in fast] == _tarfile_view(data)
        for m in fast:  # the offsets point at the members' bytes
            assert len(data[m.offset_data: m.offset_data + m.size]) == m.size
    return fast


SAMPLES = [(f"{i:06d}.{ext}", bytes([i % 251]) * (n + i)) for i in range(20)
           for ext, n in (("jpg", 3000), ("txt", 40), ("json", 90))]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_plain_archives_take_the_fast_walk_in_every_format(fmt):
    fast = _agrees(_tar(SAMPLES, fmt))
    assert fast is not None and [m.name for m in fast] == [n for n, _ in SAMPLES]


def test_empty_member_and_block_sized_member():
    assert _agrees(_tar([("a.txt", b""), ("b.jpg", b"x" * 512), ("c.jpg", b"y" * 1024)])) is not None


@pytest.mark.parametrize("case", ["dir", "symlink", "long_name", "non_ascii", "prefix_name"])
def test_anything_but_short_regular_files_goes_to_tarfile(case):
    def add_dir(tf):
        ti = tarfile.TarInfo("folder")
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)

    def add_link(tf):
        ti = tarfile.TarInfo("link.jpg")
        ti.type, ti.linkname = tarfile.SYMTYPE, "000000.jpg"
        tf.addfile(ti)

    data = {
        "dir": lambda: _tar(SAMPLES[:3], extra=add_dir),
        "symlink": lambda: _tar(SAMPLES[:3], extra=add_link),
        "long_name": lambda: _tar([("k" * 150 + ".jpg", b"x")], tarfile.GNU_FORMAT),
        "non_ascii": lambda: _tar([("caf\u00e9.jpg", b"x")], tarfile.PAX_FORMAT),
        "prefix_name": lambda: _tar([("d" * 90 + "/" + "e" * 60 + ".jpg", b"x")], tarfile.USTAR_FORMAT),
    }[case]()
    assert _agrees(data) is None


@pytest.mark.parametrize("cut", [0, 100, 512, 700, 3000, -1024, -512, -1])
def test_truncated_archives_go_to_tarfile(cut):
    whole = _tar(SAMPLES[:6])
    data = whole[:cut] if cut >= 0 else whole[:len(whole) + cut]
    # A cut inside the zero padding that ends the archive leaves it complete, for both readers.
    assert (_agrees(data) is None) == (_tarfile_view(data) is None)


def test_random_byte_flips_never_make_the_walk_disagree_with_tarfile():
    whole = _tar(SAMPLES[:9])
    rng = random.Random(0)
    for _ in range(400):
        data = bytearray(whole)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(0, 512 * 4) if rng.random() < 0.7 else rng.randrange(len(data))
            data[at] = rng.randrange(256)
        _agrees(bytes(data))
