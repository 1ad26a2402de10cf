"""The recipe's data sections: where images come from, how captions are made, buckets, caches and control maps.

Part of the one recipe schema (archdiff/config/schema.py re-exports every name); no torch.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _fits_vae(pixels: int) -> int:
    if pixels % 8:
        raise ValueError("must be a multiple of 8 (the VAE downsamples by 8)")
    return pixels


# Upper bounds checked before anything is allocated: SDXL trains at 1024 px, so 4096 px (16x its pixels, a
# 512x512 latent whose self-attention alone needs terabytes) is already past any GPU; batches likewise.
MAX_RESOLUTION = 4096

VaePixels = Annotated[int, AfterValidator(_fits_vae)]  # a pixel size the VAE's factor-8 latents can represent


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CaptionConfig(Section):
    """Where a caption comes from and how training varies it (variation never applies to val_loss)."""

    column: str = Field("text", description="Metadata column (or sidecar .txt file) holding the caption.")
    template: str | None = Field(
        None, description="Build the caption from metadata fields instead, e.g. '{view} of a {style} {typology}, {material}'."
    )
    field_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Chance to leave out each template field.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Chance to train on an empty caption (helps guidance).")
    trigger: str | None = Field(None, description="Token put first in every caption, e.g. 'arcdf style'.")
    shuffle_tags: bool = Field(False, description="Shuffle the comma-separated tags each time.")
    keep_tags: int = Field(1, ge=0, description="Tags at the start that shuffling leaves in place.")


class SourceConfig(Section):
    path: str = Field(description="Bundled set or manifest name (archdiff data list), local folder, or Hub dataset id.")
    kind: Literal["photo", "drawing"] | None = Field(
        None, description="photo or drawing for every image; null reads the `kind_column` per image, else photo."
    )
    kind_column: str = "kind"
    repeats: int = Field(1, ge=1, description="How many times each image of this source appears per epoch.")
    split: str = Field("train", description="Split of a Hub dataset.")
    image_column: str = "image"
    control_column: str = Field(
        "control",
        description="ControlNet runs: the column naming each image's control image (a file in the folder, or an image).",
    )
    caption: CaptionConfig | None = Field(None, description="Caption settings for this source; null takes data.caption.")
    mask_column: str | None = Field(
        None,
        description="Masked loss: the column naming each image's mask (a file in the folder, or an image); "
        "white = learn, black = ignore, grey = partial weight; an empty cell learns everywhere.",
    )
    mask_alpha: bool = Field(
        False, description="Masked loss: each image's own alpha channel is its mask (an image without alpha learns everywhere)."
    )

    @model_validator(mode="after")
    def _one_mask(self):
        if self.mask_column and self.mask_alpha:
            raise ValueError("mask_column and mask_alpha are both set; a source takes its masks from one of them")
        if self.mask_column in (self.image_column, self.control_column):
            raise ValueError(f"mask_column '{self.mask_column}' is also the image or control column; name the masks' own column")
        return self

    @property
    def masked(self) -> bool:
        """Whether this source's images carry loss masks."""
        return bool(self.mask_column) or self.mask_alpha


class BucketConfig(Section):
    """Aspect-ratio buckets: sides are multiples of `step`, pixel area about resolution squared."""

    enabled: bool = Field(True, description="false: every image is cropped to a resolution x resolution square.")
    step: VaePixels = Field(64, ge=8, description="Side granularity in pixels: 64 for SD (latents divisible by 8).")
    max_aspect: float = Field(4.0, ge=1.0, description="Widest (or tallest) bucket, as long side / short side.")


class CacheConfig(Section):
    latents: bool = Field(False, description="Encode every image with the VAE once, before training, into the cache.")
    text: bool = Field(False, description="Encode every caption once; needs captions without dropout or shuffling.")


class ControlDataConfig(Section):
    """How a ControlNet run's control images are made: the extractor runs on the bucket-sized image, so training,
    validation and `archdiff sample --control-type` see the same kind of map."""

    type: Literal["lines", "canny", "drawing", "none"] = Field(
        "none",
        description="lines (straight segments, MLSD style) | canny | drawing (a sketch made white-on-black) | none (as given). "
        "Applied to each source's control images; a source without a control column gets it applied to its own images.",
    )
    canny_low: int = Field(100, ge=0, le=255)
    canny_high: int = Field(200, ge=0, le=255)

    @model_validator(mode="after")
    def _thresholds_ordered(self):
        if self.canny_low > self.canny_high:
            raise ValueError(f"canny_low ({self.canny_low}) is above canny_high ({self.canny_high})")
        return self


class DataConfig(Section):
    sources: list[SourceConfig] = Field(min_length=1, description="One or more image sources, mixed with per-source repeats.")
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    resolution: VaePixels = Field(
        512, ge=8, le=MAX_RESOLUTION, description="Training size: buckets hold about resolution squared pixels."
    )
    buckets: BucketConfig = Field(default_factory=BucketConfig)
    center_crop: bool = True
    random_flip: bool = Field(False, description="Mirror photos at random; drawings are never mirrored.")
    rotate_drawings: bool = Field(False, description="Rotate drawings by 180 degrees (and 90/270 in square buckets) at random.")
    tile_drawings: float | None = Field(
        None, gt=1.0, description="Also cut drawings with more than N times the bucket's pixels into native-resolution tiles."
    )
    tile_overlap: float = Field(0.25, ge=0.0, lt=1.0)
    max_pixels: int = Field(150_000_000, ge=1, description="Refuse images with more pixels (decompression bombs).")
    holdout: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of images kept out of training for val_loss.")
    holdout_group: str | None = Field(
        None, description="Metadata column (e.g. building_id) whose groups stay on one side of the holdout split."
    )
    cache: CacheConfig = Field(default_factory=CacheConfig)
    control: ControlDataConfig = Field(default_factory=ControlDataConfig)
    num_workers: int = Field(0, ge=0)
    decode: Literal["reduced", "full"] = Field(
        "reduced",
        description="reduced: JPEGs decode at the smallest DCT scale (1/2, 1/4, 1/8) still covering their bucket, then "
        "resize (over 40 dB from a full decode; about 2x faster to decode camera photos) | full: all at full size, as before.",
    )
    decode_workers: int | None = Field(
        None, ge=1, description="Threads that scan and prepare images for the caches; null: every CPU this process may use."
    )

    @model_validator(mode="after")
    def _square_bucket_exists(self):
        if self.resolution % self.buckets.step:
            raise ValueError(f"resolution {self.resolution} must be a multiple of data.buckets.step ({self.buckets.step})")
        return self
