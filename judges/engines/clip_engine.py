"""open_clip image and text towers, batched, for cheap image-text similarity.

The image tower is what a clip stage spends its GPU time on, so decoding is
kept cheap (PIL ``draft`` shrinks JPEGs while decoding) and inference runs in
fp16/bf16 on GPU. Cosine similarity of L2-normalised embeddings is returned;
CLIP models differ in scale, so filters should cut by percentile, not by a
fixed cosine.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from judges.engines.base import ModelNotFound


@dataclass
class ClipOutput:
    similarity: np.ndarray      # float32, NaN where the row failed
    errors: list[str | None]


class ClipEngine:
    def __init__(self, model: str, pretrained: str | None = None, *, config_dir: str | None = None,
                 device: str = "auto", precision: str = "auto", batch_size: int = 256,
                 decode_threads: int = 8, gpu_decode: bool = False):
        self.model_name = model
        self.pretrained = pretrained
        self.config_dir = config_dir
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        # PIL releases the GIL while decoding and resizing, so threads feed the GPU from one actor.
        self.decode_threads = decode_threads
        # nvJPEG through torchvision: decode and resize on the GPU (worth it for small CLIP models).
        self.gpu_decode = gpu_decode
        self.model = None

    def setup(self) -> None:
        import open_clip
        import torch

        if self.config_dir:
            if not os.path.isdir(self.config_dir):
                raise ModelNotFound(f"open_clip config_dir {self.config_dir!r} does not exist")
            open_clip.add_model_config(self.config_dir)
        if self.model_name not in open_clip.list_models():
            raise ModelNotFound(
                f"open_clip model {self.model_name!r} is not a known config; known include "
                f"{', '.join(open_clip.list_models()[:6])}, ...; add a custom config with 'config_dir'"
            )
        if self.pretrained and (os.sep in self.pretrained or self.pretrained.endswith((".bin", ".pt", ".safetensors"))) \
                and not os.path.exists(self.pretrained):
            raise ModelNotFound(f"open_clip weights {self.pretrained!r} not found: give a local file or an open_clip pretrained tag")
        device = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        precision = self.precision if self.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=self.pretrained, device=device, precision=precision)
        except RuntimeError as e:
            raise ModelNotFound(f"open_clip could not load {self.model_name!r} (pretrained={self.pretrained!r}): {e}") from e
        model.eval()
        self.model, self.preprocess = model, preprocess
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        self._device = device
        size = getattr(model.visual, "image_size", 224)
        self._side = size[0] if isinstance(size, (tuple, list)) else size
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max(1, self.decode_threads)) if self.decode_threads > 1 else None
        self._gpu_decode = self.gpu_decode and device == "cuda"
        if self._gpu_decode:
            cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
            self._mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=device).view(1, 3, 1, 1)
            self._std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)

    def _load(self, data: bytes):
        from PIL import Image

        im = Image.open(io.BytesIO(data))
        if im.format == "JPEG":
            im.draft("RGB", (self._side, self._side))  # decode at a reduced scale: much cheaper
        return self.preprocess(im.convert("RGB"))

    def _load_safe(self, data: bytes):
        try:
            return self._load(data), None
        except Exception as e:  # undecodable image: that row only
            return None, f"clip_image: {type(e).__name__}: {e}"

    def _gpu_load(self, batch: list[bytes]):
        """JPEGs decoded by nvJPEG, resized (shortest side), centre-cropped and normalised on the GPU."""
        import torch
        import torch.nn.functional as F
        from torchvision.io import ImageReadMode, decode_jpeg

        out, errs = [None] * len(batch), [None] * len(batch)
        jpeg = [i for i, b in enumerate(batch) if b[:3] == b"\xff\xd8\xff"]
        if jpeg:
            try:
                decoded = decode_jpeg([torch.frombuffer(bytearray(batch[i]), dtype=torch.uint8) for i in jpeg],
                                      mode=ImageReadMode.RGB, device=self._device)
            except RuntimeError:
                decoded = None  # one bad JPEG fails the call: fall back per image below
            if decoded is not None:
                s = self._side
                for i, img in zip(jpeg, decoded):
                    h, w = img.shape[-2:]
                    scale = s / min(h, w)
                    x = F.interpolate(img[None].float() / 255.0, size=(max(s, round(h * scale)), max(s, round(w * scale))),
                                      mode="bilinear", antialias=True, align_corners=False)
                    top, left = (x.shape[-2] - s) // 2, (x.shape[-1] - s) // 2
                    out[i] = ((x[..., top:top + s, left:left + s] - self._mean) / self._std)[0]
        for i, t in enumerate(out):
            if t is None:
                t, errs[i] = self._load_safe(batch[i])
                out[i] = t.to(self._device) if t is not None else None
        return out, errs

    def similarity(self, images: list[bytes], texts: list[str]) -> ClipOutput:
        import torch

        n = len(images)
        sims = np.full(n, np.nan, dtype=np.float32)
        errors: list[str | None] = [None] * n
        for start in range(0, n, self.batch_size):
            chunk = images[start:start + self.batch_size]
            if self._gpu_decode:
                loaded, errs = self._gpu_load(chunk)
            elif self._pool is not None:
                loaded, errs = zip(*self._pool.map(self._load_safe, chunk)) if chunk else ((), ())
            else:
                loaded, errs = zip(*map(self._load_safe, chunk)) if chunk else ((), ())
            idx, tensors, caps = [], [], []
            for k, (t, err) in enumerate(zip(loaded, errs)):
                if err:
                    errors[start + k] = err
                else:
                    idx.append(start + k)
                    tensors.append(t)
                    caps.append(texts[start + k] or "")
            if not idx:
                continue
            # Every forward pass has exactly batch_size rows (padded with copies of the first): matrix
            # kernels choose their blocking by shape, so a row's score would otherwise move in the last
            # bits with the size of the batch it came in, and with it a percentile cut over the dataset.
            pad = self.batch_size - len(tensors)
            with torch.no_grad(), torch.autocast(self._device, enabled=self._device == "cuda"):
                img = self.model.encode_image(torch.stack(tensors + [tensors[0]] * pad).to(self._device, non_blocking=True))
                txt = self.model.encode_text(self.tokenizer(caps + [caps[0]] * pad).to(self._device))
                img = img / img.norm(dim=-1, keepdim=True)
                txt = txt / txt.norm(dim=-1, keepdim=True)
                sims[idx] = (img * txt).sum(-1).float().cpu().numpy()[:len(idx)]
        return ClipOutput(similarity=sims, errors=errors)

    def close(self) -> None:
        self.model = None
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False)
