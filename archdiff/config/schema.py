"""The recipe schema: the single typed source of truth for what a recipe may say.

Every section forbids unknown keys so a typo is an error, not a silently ignored knob.
Never imports torch: `archdiff recipes validate` must stay instant.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    source: str = Field(description="Bundled set name (datasets/NAME), local image folder, or Hub dataset id.")
    caption_column: str = "text"
    resolution: int = Field(512, ge=8, description="Square training size in pixels; a multiple of 8.")
    center_crop: bool = True
    random_flip: bool = False
    holdout: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of images kept out of training for val_loss.")
    num_workers: int = Field(0, ge=0)

    @field_validator("resolution")
    @classmethod
    def _resolution_fits_vae(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8 (the VAE downsamples by 8)")
        return value


class LoraConfig(Section):
    rank: int = Field(16, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        min_length=1,
        description="UNet module names (peft matching): attention by default; add ff.net.0.proj, ff.net.2, conv1, conv2 ...",
    )


class TrainConfig(Section):
    max_steps: int = Field(1000, ge=1, description="Optimizer steps (after gradient accumulation).")
    batch_size: int = Field(1, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"] = (
        "constant_with_warmup"
    )
    warmup_steps: int = Field(0, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None, description="Training target; null takes the base scheduler's own."
    )
    snr_gamma: float | None = Field(None, gt=0, description="Min-SNR loss weighting gamma (5.0 is common); null = plain MSE.")
    noise_offset: float = Field(0.0, ge=0.0)
    log_every: int = Field(10, ge=1)
    val_every: int = Field(100, ge=1, description="Held-out denoising loss every N steps (and at start and end).")


class MemoryConfig(Section):
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no_is_a_word(cls, value):
        """YAML reads a bare `no` as false; here it means "no mixed precision"."""
        return "no" if value is False else value

    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "xformers"] = "sdpa"
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    allow_tf32: bool = True
    channels_last: bool = False


class ValidationConfig(Section):
    prompts: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0])
    steps: int = Field(25, ge=1)
    guidance: float = Field(7.5, ge=0.0)


class Recipe(Section):
    """A fully resolved recipe (after `extends` and --set overrides)."""

    name: str = Field("recipe", description="Shown in logs and model cards.")
    description: str = ""
    base: str = Field(description="Base pipeline: Hub id, local diffusers folder, or tiny-sd15.")
    output: str = Field("runs/{name}", description="Run folder; {name} is the recipe name.")
    data: DataConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    @model_validator(mode="before")
    @classmethod
    def _fill_output_name(cls, data):
        """Resolve `{name}` in `output` so the saved recipe says where the run really went."""
        if isinstance(data, dict) and isinstance(data.get("output"), str) and "{name}" in data["output"]:
            data = {**data, "output": data["output"].replace("{name}", str(data.get("name", "recipe")))}
        return data
