"""Builders of hostile and broken inputs, shared by the fuzz tests and the fuzz corpus.

Each builder writes a real file the way an attacker or a broken exporter would: tar members
made with ``tarfile.TarInfo`` (absolute names, ``..``, links, devices, FIFOs, sizes that lie),
images whose headers promise billions of pixels, files cut at any byte, MP4s whose sample
tables claim absurd frame counts or a zero frame duration, JSON nested 100000 deep.
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# -- what a reader may never do: write outside its run --------------------------------------------


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under root (links not followed) -> (kind, size): a snapshot to compare."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file" if p.is_file() else "other"
            out[str(p.relative_to(root))] = (kind, 0 if kind == "dir" else st.st_size)
    return out


@contextlib.contextmanager
def arena(base: Path):
    """A fresh folder for one example, with the process's working directory in ``arena/work``, so
    a member named ``../escape`` or ``ARENA/escape`` would land inside the watched arena."""
    root = Path(tempfile.mkdtemp(dir=base))
    (root / "work").mkdir()
    old = os.getcwd()
    os.chdir(root / "work")
    try:
        yield root
    finally:
        os.chdir(old)


# -- tars ---------------------------------------------------------------------------------------------


@dataclass
class Member:
    """One tar member as a hostile writer may make it."""

    name: str
    kind: str = "file"       # file | symlink | hardlink | chardev | blockdev | fifo | dir
    data: bytes = b""
    linkname: str = ""
    declared_size: int | None = None  # a header that lies about the size (the data is cut short)


def tar_bytes(members: list[Member]) -> bytes:
    """A GNU tar holding ``members`` exactly as described (no normalisation of names)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mtime, info.mode = 1_700_000_000, 0o644
            if m.kind == "file":
                info.size = len(m.data)
                tf.addfile(info, io.BytesIO(m.data))
                continue
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "chardev": tarfile.CHRTYPE,
                         "blockdev": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE, "dir": tarfile.DIRTYPE}[m.kind]
            info.linkname = m.linkname
            if m.kind in ("chardev", "blockdev"):
                info.devmajor, info.devminor = 1, 5  # /dev/zero's numbers
            tf.addfile(info)
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:  # header offsets, before any header lies
        offsets = [t.offset for t in tf.getmembers()]
    for m, offset in zip(members, offsets):  # headers that claim more bytes than follow
        if m.declared_size is not None:
            data = _set_declared_size(data, offset, m.declared_size)
    return data


def _set_declared_size(data: bytes, offset: int, size: int) -> bytes:
    """Rewrite the size field of the header at ``offset`` (GNU base-256 for big values), fix its checksum."""
    block = bytearray(data[offset:offset + 512])
    block[124:136] = (b"%011o\0" % size) if size < 8 ** 11 else b"\x80" + size.to_bytes(11, "big")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return data[:offset] + bytes(block) + data[offset + 512:]


def end_of_members(data: bytes) -> int:
    """Byte offset where the last member's data (padded to a block) ends: the end-of-archive block."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        ms = tf.getmembers()
    if not ms:
        return 0
    last = ms[-1]
    return last.offset_data + (-(-last.size // 512) * 512 if last.isreg() else 0)


def member_spans(data: bytes) -> dict[str, tuple[int, int]]:
    """name -> (header offset, end of its data) for each member."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: (m.offset, m.offset_data + (m.size if m.isreg() else 0)) for m in tf.getmembers()}


def sparse_huge_tar(path: Path, size: int, name: str = "huge.jpg") -> Path:
    """A tar whose one member really holds ``size`` bytes, written as a sparse file (a hole), so
    a multi-GiB member costs no disk and no time to make -- but would cost that much memory to read."""
    header = tarfile.TarInfo(name)
    header.size = size
    with open(path, "wb") as f:
        f.write(header.tobuf(format=tarfile.GNU_FORMAT))
        f.seek(512 + (-(-size // 512) * 512) + 2 * 512 - 1)
        f.write(b"\0")
    return path


def gzip_bomb_tar(path: Path, first: list[Member], members: int, member_bytes: int) -> Path:
    """A gzip-compressed tar: the ``first`` members (real samples), then ``members`` members of
    ``member_bytes`` zeros each (``zNNNNN.jpg``), written as one gzip stream without holding the
    raw tar in memory: 400 members of 512 KiB (200 MiB raw) compress to ~220 KB."""
    z, zeros = zlib.compressobj(9, zlib.DEFLATED, 31), bytes(member_bytes)  # wbits 31: a gzip wrapper
    head = tar_bytes(first) if first else b""
    with open(path, "wb") as f:
        f.write(z.compress(head[:end_of_members(head)] if first else b""))  # without its end-of-archive
        for i in range(members):
            info = tarfile.TarInfo(f"z{i:05d}.jpg")
            info.size, info.mtime = member_bytes, 1_700_000_000
            f.write(z.compress(info.tobuf(format=tarfile.GNU_FORMAT) + zeros + bytes(-member_bytes % 512)))
        f.write(z.compress(bytes(2 * 512)) + z.flush())  # the end-of-archive blocks
    return path


# -- JSON -----------------------------------------------------------------------------------------------


def json_bomb(depth: int, opener: str = "[") -> bytes:
    """``[[[[...`` ``depth`` levels deep (closed, so it is valid JSON at any depth)."""
    if opener == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


# -- images -------------------------------------------------------------------------------------------


def real_jpeg(size=(64, 48), seed: int = 0) -> bytes:
    im = Image.effect_noise(size, 40 + seed).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def real_png(size=(64, 48), seed: int = 0) -> bytes:
    im = Image.effect_noise(size, 40 + seed).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_chunk_spans(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, first byte, end) of each chunk of a whole PNG, in file order."""
    spans, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        spans.append((data[pos + 4:pos + 8], pos, pos + 12 + length))
        pos += 12 + length
    return spans


def rechunk_png(data: bytes, idat_size: int) -> bytes:
    """The same PNG with its compressed pixels split into IDAT chunks of ``idat_size`` bytes (as
    encoders that stream do), so its last IDAT chunk is small."""
    spans = png_chunk_spans(data)
    pixels = b"".join(data[s + 8:e - 4] for kind, s, e in spans if kind == b"IDAT")
    head = b"".join(data[s:e] for kind, s, e in spans if kind not in (b"IDAT", b"IEND"))
    idats = b"".join(_png_chunk(b"IDAT", pixels[i:i + idat_size]) for i in range(0, len(pixels), idat_size))
    return data[:8] + head + idats + _png_chunk(b"IEND", b"")


def png_bomb(width: int, height: int, full: bool = False, rgb: bool = True) -> bytes:
    """A small PNG that declares width x height pixels: a header, compressed zeros and IEND.
    ``full``: every row is there (a real zlib bomb: 270 MB of pixels in ~300 KB); else only the
    first MiB of rows (a file cut short, as small as it gets)."""
    row = width * (3 if rgb else 1) + 1
    total = row * height if full else min(1 << 20, row * height)
    z, zeros, parts = zlib.compressobj(9), b"\0" * (1 << 20), []
    for start in range(0, total, 1 << 20):
        parts.append(z.compress(zeros[: min(1 << 20, total - start)]))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if rgb else 0, 0, 0, 0)  # 8-bit RGB or grayscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def gif_bomb(width: int, height: int) -> bytes:
    """A GIF whose logical screen and one image are width x height (max 65535 each)."""
    small = io.BytesIO()
    Image.new("L", (2, 2)).save(small, format="GIF")
    data = bytearray(small.getvalue())
    struct.pack_into("<HH", data, 6, width, height)             # logical screen
    i = data.index(b",")                                        # image descriptor
    struct.pack_into("<HH", data, i + 5, width, height)
    return bytes(data)


def jpeg_bomb(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF header is patched to claim width x height (max 65535 each)."""
    data = bytearray(real_jpeg((16, 16)))
    i = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, height, width)
    return bytes(data)


# -- MP4 ------------------------------------------------------------------------------------------------


def mp4_box(data: bytes, kind: bytes) -> int:
    """Offset of the first box of ``kind`` (its size field)."""
    i = data.find(kind)
    assert i >= 4, kind
    return i - 4


def patch_u32(data: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(">I", out, offset, value & 0xFFFFFFFF)
    return bytes(out)


def mp4_variants(good: bytes) -> dict[str, bytes]:
    """Lies an MP4's sample tables can tell, made from a real one: absurd frame counts (the
    ``stts`` run length, the ``stsz`` count, the number of ``stts`` entries), a zero or maximal
    frame duration (fps infinite or ~0), a zero time scale, a duration of 2^32-1."""
    stts, stsz, mdhd = mp4_box(good, b"stts"), mp4_box(good, b"stsz"), mp4_box(good, b"mdhd")
    return {
        "stts_frame_count_2^32-1": patch_u32(good, stts + 16, 0xFFFFFFFF),
        "stts_frame_count_1e9": patch_u32(good, stts + 16, 10 ** 9),
        "stts_entries_2^31-1": patch_u32(good, stts + 12, 0x7FFFFFFF),
        "stsz_frame_count_2^32-16": patch_u32(good, stsz + 16, 0xFFFFFFF0),
        "stts_frame_duration_0": patch_u32(good, stts + 20, 0),
        "stts_frame_duration_max": patch_u32(good, stts + 20, 0xFFFFFFFF),
        "mdhd_timescale_0": patch_u32(good, mdhd + 20, 0),
        "mdhd_duration_max": patch_u32(good, mdhd + 24, 0xFFFFFFFF),
    }


def tiny_mp4(path: Path, seconds: float = 2.0) -> Path:
    """A real 64x48 H.264 clip (PyAV, from scikit-image's coffee photo)."""
    from pipeline.video_data import make_video, photo

    return make_video(path, photo("coffee"), seconds=seconds, fps=10, size=(64, 48))


# -- memory --------------------------------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")
