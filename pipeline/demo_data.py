"""Build the demo input: real images that installed packages ship, with captions from the repo.

``data/demo/captions.jsonl`` names each image by package (``skimage:``,
``sklearn:``) or as ``derived:`` (a 16 px thumbnail, a truncated JPEG, a
missing file), so the demo shows kept, dropped and error rows. The last line
is deliberately not valid JSON.

    python -m pipeline.demo_data OUT_DIR [--repeat N]

``--repeat`` writes N copies with distinct keys and captions, for tests and
benchmarks that need more rows than the 20 images.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from pathlib import Path

CAPTIONS = Path(__file__).resolve().parent.parent / "data" / "demo" / "captions.jsonl"


def _package_file(spec: str) -> Path:
    pkg, name = spec.split(":", 1)
    if pkg == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data" / name
    if pkg == "sklearn":
        import sklearn

        return Path(sklearn.__file__).parent / "datasets" / "images" / name
    raise ValueError(f"unknown package prefix in {spec!r}")


def _derived(name: str, out: Path) -> None:
    from PIL import Image

    if name == "chelsea_thumb_16.png":
        Image.open(_package_file("skimage:chelsea.png")).convert("RGB").resize((16, 12)).save(out / name)
    elif name == "rocket_truncated.jpg":
        data = _package_file("skimage:rocket.jpg").read_bytes()
        (out / name).write_bytes(data[: len(data) // 2])
    # does_not_exist.jpg: deliberately not written


def build_demo(out_dir: str | os.PathLike, repeat: int = 1) -> Path:
    """Write images/ and captions.jsonl under out_dir; returns out_dir."""
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines_out = []
    for raw in CAPTIONS.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            rec = None
        if rec is None:
            for r in range(repeat):
                lines_out.append(raw)
            continue
        spec = rec["file"]
        name = spec.split(":", 1)[1]
        if spec.startswith("derived:"):
            _derived(name, images)
        else:
            target = images / name
            if not target.exists():
                shutil.copyfile(_package_file(spec), target)
        for r in range(repeat):
            rec_r = {"id": rec["id"] if repeat == 1 else f"{rec['id']}_{r:04d}",
                     "image": f"images/{name}",
                     "caption": rec["caption"] if repeat == 1 else f"{rec['caption']} (copy {r})"}
            lines_out.append(json.dumps(rec_r, ensure_ascii=False))
    (out / "captions.jsonl").write_text("\n".join(lines_out) + "\n", encoding="utf-8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    print(build_demo(args.out_dir, args.repeat))


if __name__ == "__main__":
    main()
