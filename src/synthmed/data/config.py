"""Configuration of the real data: source, image policy, splits and training subsets."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LongTailConfig(_Strict):
    """Exponential long-tail profile: class i keeps max_per_class * ratio ** (-rank_i / (C - 1)) images."""

    ratio: float = Field(100.0, ge=1.0, description="largest / smallest class size")
    max_per_class: int = Field(1000, gt=0, description="size of the head class")
    order: list[str] | None = Field(None, description="class names from head to tail; None = seeded shuffle")


class PhantomConfig(_Strict):
    """Parameters of the procedural ``phantom:blood`` source."""

    n_classes: int = Field(8, ge=2, le=8)
    n_per_class: int = Field(120, gt=0, description="images per class before splitting")
    size: int = Field(32, ge=28, le=128, description="generated image size in pixels")
    seed: int = 0


class DataConfig(_Strict):
    """Where the real images come from and how they are prepared and split."""

    source: str = Field(
        "phantom:blood", description="npz:PATH | medmnist:NAME[:SIZE] | folder:PATH | csv:PATH | dicom:DIR|CSV | phantom:blood")
    root: str | None = Field(None, description="folder for medmnist downloads (default $SYNTHMED_DATA or ~/.synthmed/data)")
    size: int | None = Field(None, ge=8, le=1024, description="square side after centre-crop + resize; None = native")
    channels: Literal["auto", 1, 3] = Field("auto", description="auto keeps grayscale as 1 channel")
    resize: Literal["center_crop", "resize", "pad"] = "center_crop"
    window: tuple[float, float] | None = Field(
        None, description="[center, width] of the value window for >8-bit images and DICOM (None = DICOM header, else intensity)")
    intensity: Literal["range", "minmax", "percentile"] = Field(
        "range", description=">8-bit images without a window: type range (16-bit: 0..65535), per-image min-max, or 0.5-99.5th percentile")
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    split_seed: int = 0
    shots: int | None = Field(None, gt=0, description="K training images per class")
    long_tail: LongTailConfig | None = None
    fraction: float | None = Field(None, gt=0.0, le=1.0, description="keep this fraction of the training set")
    subset_seed: int = 0
    classes: list[str] | None = Field(None, description="class names in index order; labels outside it are an error")
    strict: bool = Field(False, description="turn warnings (skipped files, duplicates) into errors")
    orientation_matters: bool | None = Field(
        None, description="flips/rotations change the label (laterality); None = detect from class names")
    near_duplicate_distance: int | None = Field(
        None, ge=0, description="perceptual-hash Hamming distance counted as a near-duplicate (None = documented default)")
    display_names: dict[str, str] | None = Field(
        None, description="class name -> display name for prompts and the report (e.g. ig: immature granulocyte)")
    max_image_pixels: int = Field(89_478_485, gt=0, description="decompression-bomb limit (PIL's default)")
    phantom: PhantomConfig = Field(default_factory=PhantomConfig)

    @field_validator("window")
    @classmethod
    def _positive_width(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[1] > 0:
            raise ValueError(f"data.window is [center, width] with width > 0, got {list(value)}")
        return value
