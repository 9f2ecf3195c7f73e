"""Paths as URIs: local folders today, object stores through pyarrow.fs.

All run-directory I/O goes through here so that atomic commit has one
definition: write under a temporary name and rename (local), or write the
object and publish a completion record last (object stores, no rename).
"""
from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def s3_endpoint() -> str | None:
    """An S3-compatible endpoint (MinIO, Ceph, a test server) from the AWS SDK's own variables."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_filesystem() -> pafs.S3FileSystem:
    """Credentials and region come from the environment or instance profile (never from config,
    so they never reach run.json or logs); only a custom endpoint is passed on explicitly."""
    endpoint = s3_endpoint()
    if not endpoint:
        return pafs.S3FileSystem()
    scheme, _, host = endpoint.partition("://")
    return pafs.S3FileSystem(endpoint_override=host or scheme, scheme="http" if scheme == "http" else "https")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    if uri.startswith("s3://"):
        return s3_filesystem(), uri[len("s3://"):]
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def list_files(uri: str, suffix: str = "", recursive: bool = False) -> list[pafs.FileInfo]:
    """Files under a folder, sorted by path, skipping temporaries (names starting with '.' or '_tmp')."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    out = [
        i for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(suffix)
        and not i.base_name.startswith((".", "_tmp"))
    ]
    if not is_local(uri):
        # Object-store filesystems list "bucket/key": give callers URIs they can resolve again.
        scheme = uri.split("://", 1)[0]
        out = [pafs.FileInfo(f"{scheme}://{i.path}", type=i.type, size=i.size) for i in out]
    return sorted(out, key=lambda i: i.path)


def rmtree(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def remove(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


class WriteError(OSError):
    """A failed local write (disk full, read-only, no permission) naming the file, which pyarrow's
    message does not: ``[Errno 28] No space left on device: '/run/shards/x-000001.tar'``.
    Rebuilt from (errno, path) alone when pickled, so it reaches the driver from a Ray task intact
    (Ray Data appends its retry advice to an exception's args, which would become the filename)."""

    def __init__(self, code: int, path: str):
        super().__init__(code, os.strerror(code), path)

    def __reduce__(self):
        return type(self), (self.errno, self.filename)


OUTPUT_BUFFER_BYTES = 1024 * 1024
_WRITE_ERROR_LINE = re.compile(r"^pipeline\.storage\.WriteError: \[Errno (\d+)\] [^\n]*?: (['\"])(.*)\2$", re.M)


def write_error_in(e: BaseException) -> WriteError | None:
    """The WriteError behind a failed Ray task or Ray Data step, if one is. Ray Data passes a
    step's exception to the driver only as worker traceback text (its UserCodeException drops
    the cause), so the last WriteError line is read back from it."""
    for err in (getattr(e, "cause", None), e):  # Ray's RayTaskError(WriteError) itself has no errno
        if isinstance(err, WriteError) and err.errno:
            return WriteError(err.errno, err.filename)
    found = list(_WRITE_ERROR_LINE.finditer(str(e)))
    return WriteError(int(found[-1][1]), found[-1][3]) if found else None


def _raise_write_error(e: OSError, path: str, tmp: str | None) -> NoReturn:
    """Drop the temporary, then raise the error as a WriteError naming the file."""
    if tmp and os.path.exists(tmp):
        os.remove(tmp)
    if e.errno and not isinstance(e, WriteError):
        raise WriteError(e.errno, path) from e
    raise e


def _tmp_name(path: str) -> str:
    head, tail = path.rsplit("/", 1)
    return f"{head}/.{tail}.{uuid.uuid4().hex[:8]}.tmp"


def write_bytes(uri: str, data: bytes) -> None:
    """Atomic where the filesystem can rename: readers never see half a file."""
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = _tmp_name(path)
        try:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
        except OSError as e:
            _raise_write_error(e, path, tmp)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def line_chunk_offsets(uri: str, lines_per_chunk: int, block_bytes: int = 1 << 22) -> list[int]:
    """Byte offsets that cut a text file into chunks of ``lines_per_chunk`` lines: ``[0, ...,
    size]``, a cut after every ``lines_per_chunk``-th newline except one at the very end. The file
    is streamed a block at a time and numpy finds the newlines, so listing a JSONL of a billion
    lines costs the driver a block of memory (it held the whole file and looked at every byte in
    Python before)."""
    import numpy as np

    fs, path = resolve(uri)
    offsets, lines, pos = [0], 0, 0
    with fs.open_input_stream(path) as f:
        while block := f.read(block_bytes):
            newlines = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
            first = lines_per_chunk - lines % lines_per_chunk - 1  # index of the next cut's newline
            offsets.extend((pos + newlines[first::lines_per_chunk] + 1).tolist())
            lines += len(newlines)
            pos += len(block)
    if len(offsets) > 1 and offsets[-1] == pos:
        offsets.pop()
    offsets.append(pos)
    return offsets


class TooLarge(ValueError):
    """A file over the reader's byte cap; ``size`` says how big it is."""

    def __init__(self, size: int):
        super().__init__(f"{size} bytes")
        self.size = size


def read_file_capped(uri: str, max_bytes: int) -> bytes:
    """A whole file, refusing to read more than ``max_bytes`` (hostile inputs): FileNotFoundError
    when it is not a file, TooLarge when it is bigger; other I/O failures raise OSError."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(uri)
    if info.size > max_bytes:
        raise TooLarge(info.size)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri).decode("utf-8"))


def write_parquet(uri: str, table: pa.Table) -> None:
    """Atomic Parquet write (temporary name, then rename)."""
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = _tmp_name(path)
        try:
            pq.write_table(table, tmp, filesystem=fs)
        except OSError as e:
            _raise_write_error(e, path, tmp)
        os.replace(tmp, path)
    else:
        pq.write_table(table, path, filesystem=fs)


def open_output_atomic(uri: str):
    """A context manager yielding a binary stream; the file appears complete or not at all."""
    return _AtomicOutput(uri)


class _AtomicOutput:
    def __init__(self, uri: str):
        self.fs, self.path = resolve(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.tmp = _tmp_name(self.path) if self.local else self.path
        self.stream = None

    def __enter__(self):
        self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        # Writers (tar members, JSONL lines) issue many small writes; unbuffered each was a syscall.
        self.stream = self.fs.open_output_stream(self.tmp, buffer_size=OUTPUT_BUFFER_BYTES)
        return self.stream

    def __exit__(self, exc_type, exc, tb):
        try:
            self.stream.close()
        except OSError as e:
            exc = exc or e  # the last flush failed (disk full)
        if exc is not None:
            if self.local and isinstance(exc, OSError):
                _raise_write_error(exc, self.path, self.tmp)
            if self.local and os.path.exists(self.tmp):
                os.remove(self.tmp)
            if exc_type is None:
                raise exc
            return False
        if self.local:
            os.replace(self.tmp, self.path)
        return False
