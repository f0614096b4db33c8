"""Feature backbones for fidelity metrics and the memorization audit, with an on-disk feature cache.

Every backbone implements ``extract(images uint8 NHWC) -> (N, D) float32`` and has a ``name`` and an ``id`` (the
name plus a fingerprint of its weights) that keys the cache. Backbones:

- ``inception``: the TF-FID Inception-v3 (TorchScript file from ``quality.inception_path`` or ``$SYNTHMED_INCEPTION``;
  a pytorch-fid state dict when ``pytorch_fid`` is installed; torch-fidelity's download when online).
- ``classifier``: penultimate features of a classifier trained on real data (works offline, domain-specific).
- ``clip`` / ``dinov2``: only from local weights.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from synthmed.errors import UserError
from synthmed.io import atomic_write_bytes, sha256_file

INCEPTION_ENV = "SYNTHMED_INCEPTION"
CACHE_DIR = "cache"


class FeatureExtractor(Protocol):
    """A feature backbone: ``extract`` maps uint8 NHWC images to an (N, D) float32 array."""

    name: str
    id: str

    def extract(self, images: np.ndarray) -> np.ndarray: ...


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def to_float_nchw(images: np.ndarray, size: int | None) -> Any:
    """uint8 NHWC -> float32 NCHW in [0, 255], grayscale repeated to 3 channels, bilinearly resized to ``size``."""
    import torch
    import torch.nn.functional as F

    arr = np.asarray(images)
    if arr.ndim != 4 or arr.dtype != np.uint8 or arr.shape[3] not in (1, 3):
        raise ValueError(f"expected uint8 (N, H, W, 1|3) images, got {arr.dtype} {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if size is not None and (x.shape[2] != size or x.shape[3] != size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[2] > size)
    return x


class TorchExtractor:
    """Batched extraction through a torch callable on preprocessed float NCHW batches."""

    def __init__(self, name: str, id_: str, forward: Callable[[Any], Any], preprocess: Callable[[np.ndarray], Any],
                 batch_size: int = 64, device: str = "cpu") -> None:
        self.name, self.id = name, id_
        self._forward, self._preprocess = forward, preprocess
        self.batch_size, self.device = batch_size, device

    def extract(self, images: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = self._preprocess(images[start : start + self.batch_size]).to(self.device)
                out.append(self._forward(x).float().reshape(x.shape[0], -1).cpu().numpy())
        if not out:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(out).astype(np.float32)


class ClassifierExtractor:
    """Penultimate features of a trained classifier (anything with ``.features(images) -> (N, D)``)."""

    name = "classifier"

    def __init__(self, classifier: Any, fingerprint: str, batch_size: int = 256) -> None:
        self.classifier, self.id, self.batch_size = classifier, f"classifier-{fingerprint[:16]}", batch_size

    def extract(self, images: np.ndarray) -> np.ndarray:
        chunks = [np.asarray(self.classifier.features(images[s : s + self.batch_size]), np.float32)
                  for s in range(0, len(images), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


# ---------------------------------------------------------------------------------------------- inception


def _inception_file(path: str | None) -> Path | None:
    chosen = path or os.environ.get(INCEPTION_ENV) or None
    if chosen is None:
        return None
    p = Path(chosen).expanduser()
    if not p.is_file():
        raise UserError(f"Inception weights not found: {p} (set quality.inception_path or ${INCEPTION_ENV})")
    return p


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _inception_preprocess(images: np.ndarray) -> Any:
    return (to_float_nchw(images, 299) - 128.0) / 128.0


def inception_extractor(path: str | None, offline: bool, batch_size: int = 32, device: str = "cpu") -> TorchExtractor:
    """The FID Inception-v3; input convention ``(uint8 - 128) / 128`` at 299x299, output (N, 2048)."""
    import torch

    p = _inception_file(path)
    if p is not None:
        fingerprint = sha256_file(p)[:16]
        if _is_torchscript(p):  # TorchScript archives are loaded by torch.jit's restricted unpickler
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
                model = torch.jit.load(str(p), map_location=device).eval()
            return TorchExtractor("inception", f"inception-{fingerprint}", model, _inception_preprocess, batch_size, device)
        return _pytorch_fid_state_dict(p, fingerprint, batch_size, device)
    if offline:
        raise UserError(
            "no Inception weights offline: put the TF-FID Inception-v3 (TorchScript, e.g. fid-inception-v3-tf."
            f"torchscript.pt) on disk and set quality.inception_path or ${INCEPTION_ENV}, or use quality.backbone=classifier"
        )
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        raise UserError("backbone=inception needs quality.inception_path (or torch-fidelity installed to download it)") from None
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"]).to(device).eval()
    except Exception as err:  # noqa: BLE001 - no torch-fidelity or no network
        raise UserError(f"cannot get the Inception weights ({err.__class__.__name__}); set quality.inception_path") from None

    def fwd(x: Any) -> Any:
        return net((x * 128.0 + 128.0).round().clamp(0, 255).to(torch.uint8))

    return TorchExtractor("inception", "inception-torchfidelity", fwd, _inception_preprocess, batch_size, device)


def _pytorch_fid_state_dict(p: Path, fingerprint: str, batch_size: int, device: str) -> TorchExtractor:
    """A pytorch-fid ``pt_inception-2015-12-05`` state dict (safetensors, or pickle with --trust-pickle)."""
    from unittest import mock

    from synthmed.safety import load_state_dict

    try:
        from pytorch_fid import inception as pf
    except ImportError:
        raise UserError(f"{p} is not TorchScript; a state-dict Inception needs `pip install pytorch-fid`") from None
    state = load_state_dict(p)
    with mock.patch.object(pf, "load_state_dict_from_url", lambda *a, **k: state):
        net = pf.InceptionV3([3], resize_input=False, normalize_input=False, use_fid_inception=True).to(device).eval()
    return TorchExtractor("inception", f"inception-{fingerprint}", lambda x: net(x)[0], _inception_preprocess,
                          batch_size, device)


# ---------------------------------------------------------------------------------------------- clip / dinov2


def clip_extractor(path: str | None, arch: str, batch_size: int = 64, device: str = "cpu") -> TorchExtractor:
    """open_clip image embeddings from local safetensors weights (no download)."""
    import open_clip
    import torch

    from synthmed.safety import load_state_dict

    if not path:
        raise UserError("backbone=clip needs local weights: set quality.clip_path to an open_clip .safetensors file")
    state = load_state_dict(path)
    try:
        model = open_clip.create_model(arch, pretrained=None)
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path}: not open_clip '{arch}' weights ({err.__class__.__name__})") from None
    model = model.to(device).eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)

    def prep(images: np.ndarray) -> Any:
        return (to_float_nchw(images, size) / 255.0 - mean) / std

    return TorchExtractor("clip", f"clip-{arch}-{sha256_file(path)[:16]}", model.encode_image, prep, batch_size, device)


def dinov2_extractor(path: str | None, batch_size: int = 64, device: str = "cpu") -> TorchExtractor:
    """DINOv2 CLS features from a local Hugging Face folder (safetensors only, no download)."""
    import torch

    if not path or not Path(path).is_dir():
        raise UserError("backbone=dinov2 needs local weights: set quality.dinov2_path to a Hugging Face model folder")
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).to(device).eval()
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path}: cannot load a DINOv2 model ({err.__class__.__name__})") from None
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def prep(images: np.ndarray) -> Any:
        return (to_float_nchw(images, 224) / 255.0 - mean) / std

    def fwd(x: Any) -> Any:
        return model(pixel_values=x).last_hidden_state[:, 0]

    digest = hashlib.sha256("".join(sorted(os.listdir(path))).encode()).hexdigest()[:16]
    return TorchExtractor("dinov2", f"dinov2-{digest}", fwd, prep, batch_size, device)


def build_extractor(quality_cfg: Any, offline: bool, device: str = "auto",
                    classifier: Any = None, classifier_fingerprint: str = "") -> FeatureExtractor:
    """The extractor named by ``quality.backbone`` (``classifier`` needs the trained real-data classifier)."""
    dev = resolve_device(device)
    name = quality_cfg.backbone
    if name == "classifier":
        if classifier is None:
            raise ValueError("backbone=classifier needs the real-data classifier")
        return ClassifierExtractor(classifier, classifier_fingerprint)
    if name == "inception":
        return inception_extractor(quality_cfg.inception_path, offline, quality_cfg.batch_size, dev)
    if name == "clip":
        return clip_extractor(quality_cfg.clip_path, quality_cfg.clip_model, quality_cfg.batch_size, dev)
    if name == "dinov2":
        return dinov2_extractor(quality_cfg.dinov2_path, quality_cfg.batch_size, dev)
    raise UserError(f"unknown quality.backbone '{name}'")


# ---------------------------------------------------------------------------------------------- cache


def images_key(images: np.ndarray, extractor_id: str) -> str:
    """Content hash of an image set (shape + bytes, order-sensitive) and the backbone id."""
    arr = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{extractor_id}|{arr.dtype}|{arr.shape}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:32]


class FeatureCache:
    """``<dir>/<backbone>-<key>.npy`` files, written atomically; ``hits``/``misses`` count lookups."""

    def __init__(self, folder: str | os.PathLike[str] | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.hits = 0
        self.misses = 0

    def extract(self, extractor: FeatureExtractor, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, 0), np.float32)
        if self.folder is None:
            self.misses += 1
            return extractor.extract(images)
        path = self.folder / f"{extractor.name}-{images_key(images, extractor.id)}.npy"
        if path.is_file():
            try:
                feats = np.load(path, allow_pickle=False)
                if feats.shape[0] == len(images):
                    self.hits += 1
                    return feats
            except (OSError, ValueError):
                pass  # a corrupt cache entry is recomputed and overwritten
        self.misses += 1
        feats = np.asarray(extractor.extract(images), np.float32)
        buf = io.BytesIO()
        np.save(buf, feats, allow_pickle=False)
        atomic_write_bytes(path, buf.getvalue())
        return feats
