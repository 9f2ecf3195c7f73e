"""Video probing, frame sampling and crash-isolated decoding (decord), for SAIL-Video.

One video is probed and decoded once, whatever number of QA rows point at it
(``stages/video_ingest.py`` groups them). What a decode does (``decode_video``):

1. open with decord (an index of the packets, no pixel decoding): frame count,
   average fps, duration from the last frame's timestamp;
2. reject what is not a usable video: no video stream (audio-only), a single
   frame (a still image named .mp4), too short, too long, too small;
3. decode only the sampled frames: ``uniform_frame_indices`` (the indices the
   perceptual fingerprint is defined on) through ``get_batch`` in groups of
   ``frames_per_call``, so at most that many full-resolution frames are alive
   at once and a two-hour video costs what a short one does;
4. for each frame: its pHash (the video fingerprint), then a JPEG resized to
   at most ``max_side`` pixels (what the judge sees).

Decoders crash on hostile files (a segfault in FFmpeg or decord kills the
process) or stall on them. So decoding runs in a child process
(``IsolatedDecoder``: ``python -m stages.video``), reused across videos; the
parent waits with a timeout. A child that dies or does not answer in time is
killed and replaced, and only that video becomes an ``error`` row. A lying file can also make
the decoder allocate without end, so the child runs under ``max_memory_mb`` (``RLIMIT_DATA``:
heap and private anonymous mappings); a decode that hits it is an error row
(``video_decoder_out_of_memory``) and the child is replaced before the next video.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# stages.base's status values, not imported: it pulls in pandas and pyarrow, and the decoder
# child imports this module, so it stays small (decord, Pillow, imagehash).
KEPT, DROPPED, ERROR = "kept", "dropped", "error"
VIDEO_EXTS = ("mp4", "avi", "mkv", "webm", "mov", "m4v", "mpg", "mpeg", "ts", "flv", "3gp", "wmv", "ogv")
_LEN = struct.Struct("<Q")
_ROOT = Path(__file__).resolve().parent.parent  # the folder holding the `stages` package


class VideoDecodeParams(BaseModel):
    """How videos are probed, checked and sampled (the `decode` block of `video_ingest`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # as stages.base.Params

    num_frames: int = Field(16, ge=1, le=512, description="frames sampled uniformly in time (SPEC: 16)")
    max_side: int = Field(448, ge=16, description="sampled frames are downscaled to at most this side (448 = one judge tile)")
    jpeg_quality: int = Field(85, ge=1, le=100)
    min_duration_s: float = Field(1.0, ge=0, description="shorter videos are dropped")
    max_duration_s: float | None = Field(3 * 3600.0, gt=0, description="longer videos are dropped (None: no limit)")
    min_side: int = Field(32, ge=1, description="videos whose shorter side is below this are dropped")
    frames_per_call: int = Field(4, ge=1, description="frames per get_batch call: bounds full-size frames in memory")
    decode_threads: int = Field(1, ge=0, description="decord threads per video (0: FFmpeg decides)")
    timeout_s: float = Field(120.0, gt=0, description="a decode taking longer is killed; the video becomes an error row")
    max_memory_mb: int | None = Field(
        4096, ge=256, description="the decoder process's data memory cap (RLIMIT_DATA, whole process: ~170 MB idle); "
                                  "a decode over it is an error row and the decoder restarts. Measured need with "
                                  "the other defaults: ~250 MB at 160x120, ~410 MB at 1080p, ~900 MB at 4K (None: no cap)")
    fingerprint: bool = Field(True, description="pHash each sampled frame (video_fingerprint column)")


@dataclass(frozen=True)
class VideoRef:
    """Where a video's bytes are: a whole local file, or a byte range of one (a tar member)."""

    path: str
    offset: int | None = None
    size: int | None = None

    def uri(self) -> str:
        """An FFmpeg URL: ``file:`` (so a ':' in a name is never read as a protocol) or a
        ``subfile`` range, which decodes a tar member in place without copying it out."""
        path = os.path.abspath(self.path)
        if self.offset is None:
            return f"file:{path}"
        return f"subfile,,start,{self.offset},end,{self.offset + self.size},,:{path}"


def format_number(value: float) -> str:
    """As stages.base.format_number: 3 not 3.0 in reasons."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# -- what a file is, from its first bytes -----------------------------------------------------
_NOT_VIDEO_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip file"),
)


def sniff_not_video(head: bytes) -> str | None:
    """A reason when the first bytes say 'not a video' (a JPEG saved as .mp4), else None.
    Containers are many and loosely signed, so only clear non-video signatures count."""
    for magic, what in _NOT_VIDEO_MAGIC:
        if head.startswith(magic):
            return f"video_not_video: the file is {what}"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "video_not_video: the file is a WebP image"
    return None


# -- the decode itself (runs in the child process) ---------------------------------------------
def sample_frame_indices(frame_count: int, num_frames: int) -> list[int]:
    """Uniform in time, first to last frame (the indices video fingerprints are defined on)."""
    from dedup.perceptual import uniform_frame_indices

    return uniform_frame_indices(frame_count, num_frames)


_NOISE = re.compile(r"\[\d\d:\d\d:\d\d\] |/\S+\.(?:cc|h|cpp):\d+: ")


def _first_line(e: BaseException) -> str:
    """The exception in one line, without decord's timestamps and C++ source locations."""
    text = _NOISE.sub("", " ".join(str(e).split()))
    return f"{type(e).__name__}: {text[:300]}"


def _classify_open_error(uri: str, e: BaseException) -> str:
    """Why decord could not open a file, in words: audio-only, no streams, or corrupt."""
    msg = str(e)
    try:
        import av

        with av.open(uri) as c:
            if not c.streams.video:
                if c.streams.audio:
                    return "video_audio_only: the file has an audio stream and no video stream"
                return "video_no_stream: the container holds no video stream"
    except Exception:
        pass
    if "cannot find video stream" in msg:
        return "video_no_stream: the container holds no video stream"
    return "video_corrupt: " + _first_line(e)


def _frame_index_state(vr, n: int) -> tuple[bool, float]:
    """(can get_batch seek reliably, duration from timestamps or 0). decord seeks by the
    presentation timestamps of its frame index; containers without them (AVI with packed
    B-frames: decord fills in huge negative values) or with repeated ones make get_batch return
    the wrong frames (measured: opencv-doc's Megamind.avi, index 108 -> frame 10), so such videos
    are decoded sequentially instead."""
    import numpy as np

    try:
        ts = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
    except Exception:
        return False, 0.0
    starts = ts[:, 0]
    ok = bool(n and np.isfinite(ts).all() and starts[0] >= -1e-3 and (np.diff(starts) > 0).all())
    return ok, float(ts[-1, 1]) if ok else 0.0


def _frame_groups(vr, indices: list[int], per_call: int, seekable: bool):
    """The frames at ``indices`` as (k, H, W, 3) uint8 arrays, at most ``per_call`` alive at a time:
    ``get_batch`` (seeks to the keyframe before each index) when the index is reliable, else one
    pass of ``next()`` from the start that keeps only the sampled frames."""
    import numpy as np

    if seekable:
        for start in range(0, len(indices), per_call):
            yield vr.get_batch(indices[start:start + per_call]).asnumpy()
        return
    want, group = set(indices), []
    for i in range(indices[-1] + 1):
        frame = vr.next()
        if i in want:
            group.append(frame.asnumpy())
            if len(group) == per_call or i == indices[-1]:
                yield np.stack(group)
                group = []


def decode_video(ref: VideoRef, params: dict[str, Any]) -> dict[str, Any]:
    """Probe, check and sample one video. Returns a dict with ``status``/``reason`` and, when it
    got that far, the probe (duration_s, fps, frame_count, width, height) and the sampled frames
    (JPEG bytes), their indices and pHashes, plus decode_s and the process's peak RSS
    (max_rss_mb) and data memory during this decode (peak_data_mb, sampled). A failed decode
    whose data memory came near ``max_memory_mb`` is marked ``out_of_memory``. Never raises for a
    bad file."""
    import resource

    p = VideoDecodeParams(**params)
    t0 = time.perf_counter()
    with DataPeak() as peak:
        out = _decode(ref, p)
    out["decode_s"] = time.perf_counter() - t0
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["peak_data_mb"] = peak.mb
    if out["status"] == ERROR and near_memory_cap(peak.mb, p.max_memory_mb):
        out["out_of_memory"] = True
    return out


def _decode(ref: VideoRef, p: VideoDecodeParams) -> dict[str, Any]:
    import numpy as np
    from decord import VideoReader, cpu
    from PIL import Image

    out: dict[str, Any] = {"status": KEPT, "reason": None}
    uri = ref.uri()
    try:
        vr = VideoReader(uri, ctx=cpu(0), num_threads=p.decode_threads)
    except Exception as e:  # decord raises RuntimeError / DECORDError / AssertionError
        return {**out, "status": ERROR, "reason": _classify_open_error(uri, e)}
    try:
        n = len(vr)
        fps = float(vr.get_avg_fps() or 0.0)
        seekable, duration = _frame_index_state(vr, n)
        if not 0 < duration < 1e7:  # no usable timestamps: fall back to the nominal rate
            if not 0 < fps < 1e6:  # a zero, negative or NaN rate (a zero frame duration or time scale)
                out.update(frame_count=n, fps=fps if fps == fps else None)
                return {**out, "status": ERROR, "reason": f"video_bad_timing: no usable frame timestamps and a "
                                                          f"frame rate of {fps:g}"}
            duration = n / fps
        out.update(frame_count=n, fps=fps, duration_s=duration, frame_access="seek" if seekable else "sequential")
        if n <= 1:
            return {**out, "status": ERROR, "reason": f"video_not_video: {n} frame(s), a still image rather than a video"}
        if duration < p.min_duration_s:
            return {**out, "status": DROPPED, "reason": f"duration_s<{format_number(p.min_duration_s)}"}
        if p.max_duration_s is not None and duration > p.max_duration_s:
            return {**out, "status": DROPPED, "reason": f"duration_s>{format_number(p.max_duration_s)}"}
        indices = sample_frame_indices(n, p.num_frames)
        frames, hashes = [], []
        for group in _frame_groups(vr, indices, p.frames_per_call, seekable):
            if "width" not in out:
                out["height"], out["width"] = int(group.shape[1]), int(group.shape[2])
                if min(out["width"], out["height"]) < p.min_side:
                    return {**out, "status": DROPPED, "reason": f"video_min_side<{p.min_side}"}
            for arr in group:
                im = Image.fromarray(np.ascontiguousarray(arr))
                if p.fingerprint:
                    from dedup.perceptual import image_phash

                    hashes.append(image_phash(im))
                if max(im.size) > p.max_side:
                    im.thumbnail((p.max_side, p.max_side), Image.Resampling.BICUBIC)
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=p.jpeg_quality)
                frames.append(buf.getvalue())
            del group
        out.update(frames=frames, frame_indices=indices, fingerprint=hashes if p.fingerprint else None)
        return out
    except Exception as e:
        return {**out, "status": ERROR, "reason": "video_decode: " + _first_line(e)}
    finally:
        del vr


# -- memory: the child's cap, and telling a decode that ran into it ---------------------------
def set_memory_cap(max_memory_mb: int | None) -> None:
    """Cap this process's data memory (the soft ``RLIMIT_DATA``; None lifts it to the hard limit).
    RLIMIT_DATA counts the heap and private writable mappings (Linux >= 4.7): what decoding
    allocates, and not the address space that ``RLIMIT_AS`` would also count -- shared libraries,
    thread stacks, malloc arenas reserved but unused -- which grows with FFmpeg's thread count
    (measured on a 4K clip: ~900 MB of data, ~1.1 GB of address space). A decode over the cap
    fails in one of several ways (measured with caps from 170 MB up on 1080p and 4K clips): a
    MemoryError, a C++ std::bad_alloc that aborts the child, an FFmpeg error, or decord looping
    on the failed allocation until the timeout; ``IsolatedDecoder`` names them all
    ``video_decoder_out_of_memory``."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = resource.RLIM_INFINITY if max_memory_mb is None else max_memory_mb << 20
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
        soft = hard
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def data_mb(pid: int | str = "self") -> float:
    """A process's data memory now, in MB: what RLIMIT_DATA limits (``/proc/PID/statm``'s data
    field: heap, private writable mappings and the stack); 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[5]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, IndexError, ValueError):
        return 0.0


def near_memory_cap(used_mb: float, cap_mb: int | None) -> bool:
    """Whether a failed decode that used ``used_mb`` of data memory failed for lack of memory:
    within max(64 MB, 1/8 of the cap) of it. The allocation that failed is never counted, and
    FFmpeg reports some failed ones as invalid data or loops on them (measured under a cap:
    'Error sending packet', or a hang), so what the process holds is the evidence."""
    return cap_mb is not None and used_mb >= cap_mb - max(64.0, cap_mb / 8)


class DataPeak:
    """The highest data memory (MB) this process holds while the block runs, sampled by a thread
    every ``interval_s`` (a read of /proc/self/statm: ~20 us)."""

    def __init__(self, interval_s: float = 0.005):
        import threading

        self.interval_s, self.mb = interval_s, data_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.mb = max(self.mb, data_mb())

    def __enter__(self) -> "DataPeak":
        try:
            self._thread.start()
        except RuntimeError:  # no memory left for a thread's stack: the samples at both ends remain
            self._thread = None
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.mb = max(self.mb, data_mb())


# What a failed allocation leaves in a decode's error or in the child's stderr: a C++
# std::bad_alloc (decord; uncaught, it aborts the process), ENOMEM from FFmpeg ("Cannot allocate
# memory"; decord's filter graph logs the bare errno, "get frame failed12"), Python's MemoryError.
_OUT_OF_MEMORY = re.compile(r"std::bad_alloc|Cannot allocate memory|MemoryError|out of memory|get frame failed\s*12\b")


# -- the child process ------------------------------------------------------------------------
def _write_msg(stream, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LEN.pack(len(data)) + data)
    stream.flush()


def _read_msg(stream) -> Any:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError
    (n,) = _LEN.unpack(head)
    return pickle.loads(stream.read(n))


def worker_main() -> None:
    """The decoder process: requests on stdin, answers on the original stdout. Anything FFmpeg or
    a library prints goes to stderr, so it can never corrupt the answers."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    # everything a decode imports, before the first request (not inside its timeout)
    import decord  # noqa: F401
    import numpy  # noqa: F401
    from PIL import Image  # noqa: F401

    from dedup.perceptual import image_phash  # noqa: F401  (imagehash, scipy)

    _write_msg(answers, {"ready": os.getpid()})
    while True:
        try:
            ref, params = _read_msg(requests)
        except EOFError:
            return
        try:
            set_memory_cap(params.get("max_memory_mb"))
            result = decode_video(ref, params)
        except Exception as e:  # a bug here (or no memory left to run it) must not end the worker
            result = {"status": ERROR, "reason": "video_decode: " + _first_line(e),
                      "out_of_memory": near_memory_cap(data_mb(), params.get("max_memory_mb"))}
        _write_msg(answers, result)


class DecoderGone(RuntimeError):
    pass


class IsolatedDecoder:
    """Decodes videos in a child process that a crash or a hang cannot take the caller down with.

    The child is started on first use and reused; it is replaced after it dies (reason
    ``video_decoder_crashed: killed by SIGSEGV``) or after ``timeout_s`` without an answer
    (``video_decode_timeout``), and after a decode that ran out of memory (its own
    ``max_memory_mb`` cap, applied in the child: ``video_decoder_out_of_memory``), since C code
    that failed an allocation may be left broken. ``stats`` counts requests, starts, crashes,
    timeouts and out-of-memory decodes (a crash or a timeout that ran out of memory counts twice)."""

    def __init__(self, timeout_s: float = 120.0, start_timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self._stderr = None
        self.stats = {"requests": 0, "starts": 0, "crashes": 0, "timeouts": 0, "out_of_memory": 0}

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "IsolatedDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("OMP_NUM_THREADS", "1")
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "stages.video"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        self.stats["starts"] += 1
        try:
            self._receive(self.start_timeout_s)
        except (TimeoutError, DecoderGone) as e:
            self._kill()
            raise RuntimeError(f"the video decoder process did not start: {e}; stderr: {self._stderr_tail()}") from None

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except Exception:
                self._kill()
            self.proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _kill(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(timeout=10)
            except Exception:
                pass
            for s in (self.proc.stdin, self.proc.stdout):
                try:
                    s.close()
                except Exception:
                    pass
            self.proc = None

    def _stderr_size(self) -> int:
        if self._stderr is None:
            return 0
        return self._stderr.seek(0, os.SEEK_END)

    def _stderr_since(self, mark: int, limit: int = 1 << 16) -> str:
        """What the child wrote to stderr since byte ``mark`` (the last ``limit`` bytes of it)."""
        if self._stderr is None:
            return ""
        try:
            end = self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(mark, end - limit))
            return self._stderr.read().decode("utf-8", "replace")
        except Exception:
            return ""

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 400))
            lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
            return lines[-1][:200] if lines else ""
        except Exception:
            return ""

    # -- talking to the child ---------------------------------------------------------------
    def _read_exact(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        parts, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                raise DecoderGone
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _receive(self, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        (n,) = _LEN.unpack(self._read_exact(_LEN.size, deadline))
        return pickle.loads(self._read_exact(n, deadline))

    def decode(self, ref: VideoRef, params: VideoDecodeParams | dict[str, Any]) -> dict[str, Any]:
        """``decode_video`` in the child; a crash, timeout or out-of-memory is an error result, never an exception."""
        params = params.model_dump() if isinstance(params, VideoDecodeParams) else dict(params)
        ref = VideoRef(os.path.abspath(ref.path), ref.offset, ref.size)  # the child may run elsewhere
        timeout = float(params.get("timeout_s", self.timeout_s))
        if self.proc is None or self.proc.poll() is not None:
            self._kill()
            self._start()
        self.stats["requests"] += 1
        stderr_mark = self._stderr_size()
        try:
            _write_msg(self.proc.stdin, (ref, params))
            result = self._receive(timeout)
        except TimeoutError:
            self.stats["timeouts"] += 1
            result = {"status": ERROR, "reason": f"video_decode_timeout: no result in {format_number(timeout)} s; decoder killed",
                      "out_of_memory": near_memory_cap(data_mb(self.proc.pid), params.get("max_memory_mb"))}
            self._kill_if_out_of_memory(result, stderr_mark, params, always=True)
            return result
        except (DecoderGone, BrokenPipeError, OSError):
            rc = self.proc.wait(timeout=10) if self.proc is not None else None
            self.stats["crashes"] += 1
            how = f"killed by {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exited with status {rc}"
            tail = self._stderr_tail()
            result = {"status": ERROR, "reason": f"video_decoder_crashed: {how}" + (f" ({tail})" if tail else "")}
            self._kill_if_out_of_memory(result, stderr_mark, params, always=True)
            return result
        if result.get("status") == ERROR:
            self._kill_if_out_of_memory(result, stderr_mark, params)
        return result

    def _kill_if_out_of_memory(self, result: dict, stderr_mark: int, params: dict, always: bool = False) -> None:
        """When the failed decode ran out of memory -- it held nearly ``max_memory_mb``
        (``out_of_memory``), or a failed allocation shows in its reason or in what the child printed
        since the request -- rename the reason ``video_decoder_out_of_memory`` and replace the
        child. ``always``: the child is replaced anyway (it crashed or hung)."""
        if (result.pop("out_of_memory", False) or _OUT_OF_MEMORY.search(result.get("reason") or "")
                or _OUT_OF_MEMORY.search(self._stderr_since(stderr_mark))):
            self.stats["out_of_memory"] += 1
            cap = params.get("max_memory_mb")
            over = f"over max_memory_mb={cap}" if cap is not None else "an allocation failed (no max_memory_mb)"
            result["reason"] = f"video_decoder_out_of_memory: {over}; decoder restarted ({result['reason']})"
            always = True
        if always:
            self._kill()


if __name__ == "__main__":
    worker_main()
