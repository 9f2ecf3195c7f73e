"""Real H.264 videos made from real photos (PyAV), and a small video-QA set with broken cases.

Videos are slow pans and zooms across scikit-image's photos, encoded with libx264, so they hold
real motion and real image statistics at any length or size. ``build_video_qa`` writes the
set the tests, the benchmark and the demo use:

    OUT/videos/*.mp4   clips (good, re-encoded and cropped, too short, truncated, empty, audio
                       only, a JPEG named .mp4), a missing one is named but absent
    OUT/qa.json        LLaVA-Video style records (conversations, or question/answer, or NextQA
                       multiple choice with a0..a4 and an answer index), several per video
    OUT/more_qa.jsonl  more records, one line that is not JSON and one without a question
    TARS/*.tar         (``tars=TARS``) two good clips as WebDataset samples: KEY.mp4 + KEY.json

The Debian ``opencv-doc`` sample videos (vtest.avi, Megamind.avi, tree.avi, Megamind_bugy.avi)
are referenced by absolute path when installed (``tools/system_deps.sh``), never copied.

    python -m pipeline.video_data OUT_DIR [--tars TARS_DIR]
"""
from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np

OPENCV_SAMPLES = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_VIDEOS = ("vtest.avi", "Megamind.avi", "tree.avi", "Megamind_bugy.avi")


def photo(name: str = "astronaut") -> np.ndarray:
    """An RGB uint8 photo from scikit-image's data (shipped with the package, no download)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def make_video(path: str | Path, image: np.ndarray, seconds: float = 3.0, fps: int = 10,
               size: tuple[int, int] = (160, 120), crop: float = 0.0, crf: int = 23,
               gop: int | None = None, preset: str = "veryfast") -> Path:
    """Encode a pan-and-zoom across ``image`` as H.264 (libx264, yuv420p). ``crop`` trims that
    share of each border first (a cropped re-encode of the same clip)."""
    import av
    from PIL import Image

    path = Path(path)
    h, w = image.shape[:2]
    if crop:
        dy, dx = int(h * crop), int(w * crop)
        image = image[dy:h - dy, dx:w - dx]
        h, w = image.shape[:2]
    src = Image.fromarray(image)
    n = max(1, int(round(seconds * fps)))
    opts = {"preset": preset, "crf": str(crf)}
    if gop:
        opts.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "0"})
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = opts
        for i in range(n):
            t = i / max(1, n - 1)
            zoom = 1.0 - 0.35 * t                      # zoom in while panning left to right
            cw, ch = int(w * zoom), int(h * zoom)
            x0, y0 = int((w - cw) * t), int((h - ch) * 0.5)
            frame = src.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BILINEAR)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_long_video(path: str | Path, image: np.ndarray, seconds: float = 7200, fps: int = 1,
                    size: tuple[int, int] = (96, 72), segment_s: int = 60) -> Path:
    """A long real H.264 video, made fast: one ``segment_s`` pan is encoded (closed GOPs, no
    B-frames) and its packets are muxed again and again with shifted timestamps, so a two-hour
    file costs one minute of encoding. Every segment starts with an IDR frame, so the stream
    decodes (and seeks) like any other."""
    import av

    path = Path(path)
    seg = path.with_suffix(".segment.mp4")
    make_video(seg, image, seconds=segment_s, fps=fps, size=size, gop=segment_s * fps, preset="ultrafast")
    with av.open(str(seg)) as src, av.open(str(path), "w") as out:
        stream = src.streams.video[0]
        packets = [(bytes(p), p.pts, p.dts, p.is_keyframe) for p in src.demux(stream) if p.size]
        dst = out.add_stream_from_template(stream)
        step = segment_s * fps * int(round(1 / (stream.time_base * fps)))  # segment length in time_base units
        for k in range(int(round(seconds / segment_s))):
            for data, pts, dts, key in packets:
                packet = av.Packet(data)
                packet.pts, packet.dts = pts + k * step, dts + k * step
                packet.is_keyframe = key
                packet.time_base = stream.time_base
                packet.stream = dst
                out.mux(packet)
    seg.unlink()
    return path


def make_audio_only(path: str | Path, seconds: float = 2.0) -> Path:
    """An .mp4 holding one AAC audio stream and no video (a real container, not junk)."""
    import av

    rate = 16000
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        t = np.arange(int(seconds * rate)) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for k, start in enumerate(range(0, len(tone), 1024)):
            chunk = tone[start:start + 1024]
            if len(chunk) < 1024:
                break
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, k * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(path)


def _qa(question: str, answer: str, **extra) -> dict:
    return {"question": question, "answer": answer, **extra}


def build_video_qa(out: str | Path, tars: str | Path | None = None, opencv: bool = True) -> Path:
    """Write the video-QA set described in the module docstring; returns OUT."""
    from PIL import Image

    out = Path(out)
    vids = out / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    astro, coffee, chelsea = photo("astronaut"), photo("coffee"), photo("chelsea")
    make_video(vids / "astronaut.mp4", astro, seconds=3, size=(192, 144))
    make_video(vids / "astronaut_recut.mp4", astro, seconds=3, size=(160, 120), crop=0.02, crf=30)
    make_video(vids / "coffee.mp4", coffee, seconds=2.5, size=(160, 120))
    make_video(vids / "cat.mp4", chelsea, seconds=2, size=(160, 112))
    make_video(vids / "short.mp4", chelsea, seconds=0.4, fps=10)
    make_video(vids / "full.mp4", coffee, seconds=3)
    (vids / "truncated.mp4").write_bytes((vids / "full.mp4").read_bytes()[:3000])
    (vids / "full.mp4").unlink()
    (vids / "empty.mp4").write_bytes(b"")
    make_audio_only(vids / "audio_only.mp4")
    buf = io.BytesIO()
    Image.fromarray(chelsea).save(buf, format="JPEG")
    (vids / "photo.mp4").write_bytes(buf.getvalue())

    records = [
        {"id": "astro-conv", "video": "videos/astronaut.mp4", "conversations": [
            {"from": "human", "value": "<image>\nWhat is the person in the video wearing?"},
            {"from": "gpt", "value": "A white spacesuit with a flag patch on the shoulder."},
            {"from": "human", "value": "How does the camera move over the course of the clip?"},
            {"from": "gpt", "value": "It pans from left to right while slowly zooming in."}]},
        {"id": "astro-1", "video": "videos/astronaut.mp4",
         **_qa("What is held in the person's hand?", "A helmet.")},
        {"id": "recut-0", "video": "videos/astronaut_recut.mp4",   # same QA, re-encoded and cropped clip
         **_qa("What is held in the person's hand?", "A helmet.")},
        {"id": "recut-1", "video": "videos/astronaut_recut.mp4",
         **_qa("Is there a flag visible in the clip?", "Yes, there is a flag in the background.")},
        {"id": "coffee-0", "video": "videos/coffee.mp4",
         **_qa("What drink is shown?", "A cup of coffee with latte art on a saucer.")},
        {"qid": 7, "video": "videos/coffee", "question": "what is under the cup",    # NextQA: id without extension
         "a0": "a plate", "a1": "a saucer", "a2": "a book", "a3": "a laptop", "a4": "nothing", "answer": 1,
         "type": "DO"},
        {"id": "cat-0", "video": "videos/cat.mp4", **_qa("What animal is in the video?", "A tabby cat.")},
        {"id": "short-0", "video": "videos/short.mp4", **_qa("What animal is shown?", "A cat.")},
        {"id": "trunc-0", "video": "videos/truncated.mp4", **_qa("What is on the table?", "A cup.")},
        {"id": "empty-0", "video": "videos/empty.mp4", **_qa("What happens?", "Nothing.")},
        {"id": "audio-0", "video": "videos/audio_only.mp4", **_qa("What is the tone?", "A 440 Hz beep.")},
        {"id": "photo-0", "video": "videos/photo.mp4", **_qa("What animal is shown?", "A cat.")},
        {"id": "missing-0", "video": "videos/not_there.mp4", **_qa("What is shown?", "Nobody knows.")},
        {"id": "missing-1", "video": "videos/not_there.mp4", **_qa("Who is there?", "Nobody.")},
    ]
    if opencv and all((OPENCV_SAMPLES / v).exists() for v in OPENCV_VIDEOS):
        records += [
            {"id": "vtest-0", "video": str(OPENCV_SAMPLES / "vtest.avi"),
             **_qa("How many people walk through the scene?", "Several pedestrians cross a plaza.")},
            {"id": "vtest-1", "video": str(OPENCV_SAMPLES / "vtest.avi"),
             **_qa("Is the camera moving?", "No, it is a fixed surveillance camera.")},
            {"id": "mega-0", "video": str(OPENCV_SAMPLES / "Megamind.avi"),
             **_qa("Is this animation or live action?", "Computer animation.")},
            {"id": "megabug-0", "video": str(OPENCV_SAMPLES / "Megamind_bugy.avi"),
             **_qa("What kind of video is this?", "An animated film clip.")},
            {"id": "tree-0", "video": str(OPENCV_SAMPLES / "tree.avi"),
             **_qa("What is in the scene?", "A tree.")},
        ]
    (out / "qa.json").write_text(json.dumps(records, indent=1))
    lines = [
        json.dumps({"id": "cat-1", "video": "videos/cat.mp4", **_qa("What colour is the cat's fur?",
                                                                     "Brown and grey stripes.")}),
        "{this line is not json",
        json.dumps({"id": "noq", "video": "videos/cat.mp4", "answer": "An answer without a question."}),
    ]
    (out / "more_qa.jsonl").write_text("\n".join(lines) + "\n")
    if tars is not None:
        Path(tars).mkdir(parents=True, exist_ok=True)
        with tarfile.open(Path(tars) / "clips-000000.tar", "w") as tf:
            for key, name, qa in (
                ("clip1", "astronaut.mp4", {"qa": [_qa("What is the person wearing?", "A spacesuit."),
                                                   _qa("What is in the background?", "A flag.")]}),
                ("clip2", "coffee.mp4", _qa("What drink is shown?", "Coffee.")),
            ):
                for member, data in ((f"{key}.mp4", (vids / name).read_bytes()),
                                     (f"{key}.json", json.dumps(qa).encode())):
                    ti = tarfile.TarInfo(member)
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--tars", help="also write two good clips as WebDataset tars in this folder")
    args = ap.parse_args()
    print(build_video_qa(args.out, tars=args.tars))


if __name__ == "__main__":
    main()
