"""Feature backbones: preprocessing, the on-disk cache, clear errors, and the FID Inception on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DIR

from synthmed.errors import UserError
from synthmed.metrics import features
from synthmed.metrics.config import QualityConfig

SHARED = SHARED_DIR  # ../shared, or SYNTHMED_SHARED_DIR
INCEPTION = SHARED / "weights" / "fid-inception-v3-tf.torchscript.pt"
BLOOD = SHARED / "data" / "bloodmnist.npz"


class CountingExtractor:
    name = "toy"

    def __init__(self, id_: str = "toy-1") -> None:
        self.id = id_
        self.calls = 0

    def extract(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        return images.reshape(len(images), -1)[:, :4].astype(np.float32)


def test_to_float_nchw_gray_to_rgb_and_resize() -> None:
    gray = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)
    x = features.to_float_nchw(gray, None)
    assert tuple(x.shape) == (2, 3, 8, 8) and float(x[0, 2, 0, 1]) == 1.0
    assert tuple(features.to_float_nchw(gray, 20).shape) == (2, 3, 20, 20)
    with pytest.raises(ValueError):
        features.to_float_nchw(gray.astype(np.float32), None)


def test_cache_hit_on_rerun_and_key_depends_on_content_and_backbone(tmp_path: Path) -> None:
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 4, 4, 1), dtype=np.uint8)
    ext = CountingExtractor()
    cache = features.FeatureCache(tmp_path / "cache")
    first = cache.extract(ext, imgs)
    again = features.FeatureCache(tmp_path / "cache").extract(ext, imgs)
    assert ext.calls == 1 and np.array_equal(first, again) and cache.misses == 1
    assert len(list((tmp_path / "cache").glob("toy-*.npy"))) == 1
    changed = imgs.copy()
    changed[0, 0, 0, 0] ^= 1
    cache.extract(ext, changed)
    cache.extract(CountingExtractor("toy-2"), imgs)
    assert ext.calls == 2 and len(list((tmp_path / "cache").glob("*.npy"))) == 3
    assert not list((tmp_path / "cache").glob(".tmp-*"))


def test_corrupt_cache_entry_is_recomputed(tmp_path: Path) -> None:
    imgs = np.zeros((3, 4, 4, 1), np.uint8)
    ext = CountingExtractor()
    cache = features.FeatureCache(tmp_path)
    cache.extract(ext, imgs)
    next(tmp_path.glob("*.npy")).write_bytes(b"garbage")
    assert cache.extract(ext, imgs).shape == (3, 4) and ext.calls == 2


def test_classifier_extractor_uses_penultimate_features() -> None:
    class Stub:
        def features(self, images: np.ndarray) -> np.ndarray:
            return np.full((len(images), 7), 2.0)

    ext = features.build_extractor(QualityConfig(), offline=True, classifier=Stub(), classifier_fingerprint="ab" * 10)
    out = ext.extract(np.zeros((600, 4, 4, 3), np.uint8))
    assert ext.name == "classifier" and out.shape == (600, 7) and ext.id.startswith("classifier-")


def test_missing_weights_give_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(features.INCEPTION_ENV, raising=False)
    with pytest.raises(UserError, match="inception_path"):
        features.build_extractor(QualityConfig(backbone="inception"), offline=True)
    with pytest.raises(UserError, match="not found"):
        features.build_extractor(QualityConfig(backbone="inception", inception_path=str(tmp_path / "x.pt")), offline=True)
    with pytest.raises(UserError, match="clip_path"):
        features.build_extractor(QualityConfig(backbone="clip"), offline=True)
    with pytest.raises(UserError, match="dinov2_path"):
        features.build_extractor(QualityConfig(backbone="dinov2"), offline=True)
    pickled = tmp_path / "sd.pt"
    pickled.write_bytes(b"\x80\x02not a zip")
    with pytest.raises(UserError) as err:
        features.build_extractor(QualityConfig(backbone="inception", inception_path=str(pickled)), offline=True)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not (INCEPTION.is_file() and BLOOD.is_file()), reason="needs ../shared FID Inception + BloodMNIST")
def test_inception_on_eight_bloodmnist_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(features.INCEPTION_ENV, str(INCEPTION))
    with np.load(BLOOD) as z:
        imgs = z["train_images"][:8]
    ext = features.build_extractor(QualityConfig(backbone="inception", batch_size=4), offline=True, device="cpu")
    cache = features.FeatureCache(tmp_path)
    f = cache.extract(ext, imgs)
    assert f.shape == (8, 2048) and np.isfinite(f).all() and f.std() > 0
    assert np.array_equal(cache.extract(ext, imgs), f) and cache.hits == 1
    gray = ext.extract(imgs[:2].mean(axis=3, keepdims=True).astype(np.uint8))  # grayscale is repeated to RGB
    assert gray.shape == (2, 2048)
