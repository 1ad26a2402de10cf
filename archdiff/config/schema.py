"""The recipe schema: the single typed source of truth for what a recipe may say.

Every section forbids unknown keys so a typo is an error, not a silently ignored knob.
Never imports torch: `archdiff recipes validate` must stay instant.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from archdiff.config.data_sections import (  # noqa: F401 - part of the one schema, imported from here everywhere
    BucketConfig,
    CacheConfig,
    CaptionConfig,
    ControlDataConfig,
    DataConfig,
    Section,
    SourceConfig,
)

MAX_BATCH_SIZE = 1024
OUTPUT_PLACEHOLDERS = ("name",)


class TextEncoderLoraConfig(Section):
    """A LoRA on the CLIP text encoder too: teaches new words (a trigger, a drawing convention's name)."""

    rank: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)
    learning_rate: float | None = Field(None, gt=0, description="Its own learning rate; null = train.learning_rate.")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"], min_length=1)


class ConvLoraConfig(Section):
    """The ResNet convolutions' own rank and alpha (kohya's conv_dim / conv_alpha)."""

    rank: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)


class LoraConfig(Section):
    rank: int = Field(16, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        min_length=1,
        description="UNet module names (peft matching): attention by default; add ff.net.0.proj, ff.net.2, conv1, conv2 ...",
    )
    text_encoder: TextEncoderLoraConfig | None = Field(None, description="Also train a LoRA on the text encoder; null = off.")
    # adapter types (issue 19)
    type: Literal["lora", "dora", "lokr", "loha"] = Field(
        "lora", description="Adapter: lora, dora (LoRA + learned magnitude), lokr (Kronecker), loha (Hadamard); peft tuners."
    )
    conv: ConvLoraConfig | None = Field(
        None, description="Own rank/alpha for the conv* target modules (kohya's conv_dim/conv_alpha); null = the same."
    )

    @model_validator(mode="after")
    def _adapter_type_fits(self):
        if self.type in ("lokr", "loha") and self.dropout:
            raise ValueError(f"lora.dropout applies to lora and dora; lora.type {self.type} has none here: set it to 0")
        if self.type in ("lokr", "loha") and self.text_encoder is not None:
            raise ValueError(f"lora.type {self.type} trains the UNet only: drop lora.text_encoder, or use type lora or dora")
        if self.conv is not None and not conv_targets(self.target_modules):
            raise ValueError("lora.conv sets the conv modules' rank, but lora.target_modules names none (add conv1, conv2 ...)")
        return self


def conv_targets(target_modules: list[str]) -> list[str]:
    """The target names that are convolutions: ResNet conv1/conv2/conv_shortcut, resamplers' conv, conv_in/out."""
    return [name for name in target_modules if name.rsplit(".", 1)[-1].startswith("conv")]


class ControlNetLoraConfig(Section):
    """A LoRA on the ControlNet instead of training all its weights: smaller, and gentler on a pretrained ControlNet."""

    rank: int = Field(16, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], min_length=1)


class ControlNetConfig(Section):
    """Train a ControlNet on paired data (control image -> target): sketch, line or edge map to render."""

    init: str | None = Field(
        None, description="Start from this ControlNet (Hub id or diffusers folder); null = a copy of the base UNet's encoder."
    )
    lora: ControlNetLoraConfig | None = Field(None, description="Train a LoRA on the ControlNet; null = train all its weights.")
    scale: float = Field(1.0, ge=0.0, description="Conditioning scale in training and validation (sample --control-scale).")
    unet_lora: bool = Field(
        False, description="Also train the recipe's `lora:` on the UNet (a style LoRA beside the ControlNet)."
    )
    style_lora: str | None = Field(
        None, description="A LoRA (run folder, .safetensors or Hub id) merged, frozen, into the UNet while the ControlNet trains."
    )


class EmaConfig(Section):
    """An exponential moving average of the trainable weights: validation and the saved LoRA use it (README: EMA)."""

    decay: float = Field(0.999, gt=0, le=1, description="Weight kept per update: 0.999 ~ the last ~1000; 0.99 for short runs.")
    start_step: int = Field(0, ge=0, description="The average copies the raw weights up to this step, then averages.")
    every: int = Field(1, ge=1, description="Update the average every N optimizer steps.")


class TrainConfig(Section):
    max_steps: int = Field(1000, ge=1, description="Optimizer steps (after gradient accumulation).")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
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
    checkpoint_every: int | None = Field(
        250, ge=1, description="Save a resumable checkpoint every N steps (and at the end); null = only at the end."
    )
    checkpoint_limit: int = Field(3, ge=1, description="Checkpoints kept; older ones are deleted.")
    trackers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"], description="Where metrics and sample grids are logged besides metrics.jsonl."
    )
    ema: EmaConfig | None = Field(None, description="Average the trained weights ({decay, start_step, every}); null = off.")


# What each `memory:` preset sets; keys the recipe writes itself win. Every preset also caches latents
# (data.cache.latents), which takes the VAE out of the step. `archdiff bench` measures what each costs.
MEMORY_PRESETS: dict[str, dict[str, object]] = {
    "low": {"gradient_checkpointing": True, "mixed_precision": "bf16", "optimizer": "adamw8bit"},
    "balanced": {"mixed_precision": "bf16"},
    "fast": {"mixed_precision": "bf16", "channels_last": True, "compile": True},
}


class MemoryConfig(Section):
    preset: Literal["low", "balanced", "fast"] | None = Field(
        None, description="low | balanced | fast: a tested set of the knobs below (`memory: low` for short)."
    )
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
    compile: bool = Field(False, description="torch.compile the UNet: slower start, faster steps (mostly on CUDA).")
    t5: Literal["keep", "drop"] = Field(
        "keep",
        description="SD 3.5 only: drop leaves T5-XXL (4.7 B parameters) out of training and validation; its part of the "
        "text conditioning is then zeros, which SD 3.5 was trained to accept.",
    )


# What `archdiff eval` can measure (archdiff/eval/scores.py computes them); the cheap ones also during training.
EvalMetric = Literal["clip_score", "fd_dino", "kid_dino", "diversity", "vendi", "geometry", "control_f1"]
ValidationMetric = Literal["clip_score", "diversity", "vendi", "geometry"]


class ValidationConfig(Section):
    prompts: list[str] = Field(default_factory=list)
    every: int | None = Field(None, ge=1, description="Also draw a prompt x seed grid into samples/ every N steps.")
    seeds: list[int] = Field(default_factory=lambda: [0])
    steps: int = Field(25, ge=1)
    guidance: float = Field(7.5, ge=0.0)
    metrics: list[ValidationMetric] = Field(
        default_factory=list,
        description="Score each validation grid (clip_score, diversity, vendi, geometry) into metrics.jsonl and the trackers, "
        "with eval.clip / eval.dino.",
    )

    @model_validator(mode="after")
    def _metrics_need_prompts(self):
        if self.metrics and not self.prompts:
            raise ValueError("validation.metrics scores the images of validation.prompts: give prompts, or drop the metrics")
        return self

    @model_validator(mode="after")
    def _diversity_needs_seeds(self):
        wanted = {"diversity", "vendi"} & set(self.metrics)
        if wanted and len(set(self.seeds)) < 2:
            raise ValueError(f"validation.metrics {sorted(wanted)} compare a prompt's images across seeds: give 2 or more seeds")
        return self


class EvalConfig(Section):
    """`archdiff eval`: the metric models and how many images each checkpoint draws (the command's options override)."""

    clip: str = Field("openai/clip-vit-large-patch14", description="CLIP model for CLIP score: Hub id, folder, or tiny-clip.")
    dino: str = Field("facebook/dinov2-base", description="DINOv2 model for FD, KID and diversity: Hub id, folder, or tiny-dino.")
    metrics: list[EvalMetric] = Field(
        default_factory=lambda: ["clip_score", "fd_dino", "kid_dino", "diversity", "vendi", "geometry", "control_f1"],
        min_length=1,
        description="What to measure; control_f1 only applies to ControlNet runs.",
    )
    num_images: int = Field(64, ge=1, le=100_000, description="Images per checkpoint, drawn from the held-out captions.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], min_length=1, description="Seeds each caption is drawn with.")
    steps: int = Field(25, ge=1)
    guidance: float = Field(7.5, ge=0.0)
    select: Literal["fd_dino", "kid_dino", "clip_score", "control_f1"] = Field(
        "fd_dino", description="The metric that names the best checkpoint (export --checkpoint best)."
    )


class DreamBoothConfig(Section):
    """Teach one subject (a building) from a few photos, keeping the class (houses) as the base drew it."""

    instance_prompt: str = Field(description="Caption of every subject image, with a rare trigger: 'a photo of sks house'.")
    class_prompt: str | None = Field(None, description="'a photo of a house': enables prior preservation; null = off.")
    class_images: int = Field(100, ge=1, description="Class images the base model draws once (cached, reused by later runs).")
    prior_loss_weight: float = Field(1.0, ge=0.0)
    class_steps: int = Field(25, ge=1, description="Sampling steps for the class images.")
    class_guidance: float = Field(7.5, ge=0.0)


class HubConfig(Section):
    """Where `archdiff train` pushes the adapter when it finishes (the same upload as `archdiff push`)."""

    repo: str = Field(description="USER/NAME of a Hugging Face Hub model repo.")
    private: bool = Field(False, description="Create the repo private (an existing repo keeps its visibility).")

    @field_validator("repo")
    @classmethod
    def _hub_repo_id(cls, repo: str) -> str:
        """The same rule `archdiff push --repo` applies, so a bad id fails before training, not after it."""
        from archdiff.hub_ids import is_repo_id

        if not is_repo_id(repo):
            raise ValueError("not a Hub repo id (owner/name: letters, digits, '-', '_', '.'; no '--' or '..')")
        return repo


class Recipe(Section):
    """A fully resolved recipe (after `extends` and --set overrides)."""

    name: str = Field("recipe", description="Shown in logs and model cards.")
    description: str = ""
    base: str = Field(description="Base pipeline: Hub id, local diffusers folder, or tiny-sd15.")
    vae: str | None = Field(
        None,
        description="An AutoencoderKL (Hub id or local folder) used instead of the base's vae/ to encode, cache and draw, "
        "e.g. madebyollin/sdxl-vae-fp16-fix for SDXL in fp16; null = the base's own.",
    )
    output: str = Field("runs/{name}", description="Run folder; {name} is the recipe name.")
    data: DataConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    dreambooth: DreamBoothConfig | None = None
    controlnet: ControlNetConfig | None = Field(None, description="Train a ControlNet on paired data; null = a LoRA run.")
    hub: HubConfig | None = Field(None, description="Push the adapter and a model card to the Hub at the end; null = don't.")

    @model_validator(mode="before")
    @classmethod
    def _apply_memory_preset(cls, data):
        """`memory: low` (or `{preset: low, ...}`): the preset's knobs and the latent cache, under what the recipe sets."""
        if not isinstance(data, dict):
            return data
        memory = data.get("memory")
        if isinstance(memory, str):
            memory = {"preset": memory}
        if not isinstance(memory, dict) or memory.get("preset") not in MEMORY_PRESETS:
            # no preset, or an unknown one (the field validator then names the choices)
            return data if memory is None else {**data, "memory": memory}
        data = {**data, "memory": {**MEMORY_PRESETS[memory["preset"]], **memory}}
        section = data.get("data")
        if isinstance(section, dict):
            cache = section.get("cache") if isinstance(section.get("cache"), dict) else {}
            data["data"] = {**section, "cache": {"latents": True, **cache}}
        return data

    @model_validator(mode="after")
    def _controlnet_alone(self):
        """DreamBooth teaches a subject to the UNet; a ControlNet run teaches a mapping: one run does one of them."""
        if self.controlnet and self.dreambooth:
            raise ValueError("controlnet and dreambooth cannot be combined in one recipe; train them as two runs")
        if self.controlnet and self.controlnet.unet_lora and self.controlnet.style_lora:
            raise ValueError("controlnet.unet_lora trains a new UNet LoRA and controlnet.style_lora loads one: choose one")
        if self.controlnet and self.lora.text_encoder and not self.controlnet.unet_lora:
            raise ValueError(
                "lora.text_encoder trains beside a UNet LoRA: in a controlnet run it needs controlnet.unet_lora: true"
            )
        return self

    @property
    def unet_lora_trains(self) -> bool:
        """A LoRA run trains `lora:` on the UNet; a ControlNet run only with controlnet.unet_lora."""
        return self.controlnet is None or self.controlnet.unet_lora

    @model_validator(mode="before")
    @classmethod
    def _fill_output_name(cls, data):
        """Resolve `{name}` in `output` so the saved recipe says where the run really went."""
        if isinstance(data, dict) and isinstance(data.get("output"), str) and not _output_placeholders(data["output"]):
            data = {**data, "output": data["output"].replace("{name}", str(data.get("name", "recipe")))}
        return data

    @field_validator("output")
    @classmethod
    def _no_unknown_placeholders(cls, output: str) -> str:
        """Whatever is left in braces after `{name}` is filled is a placeholder nothing fills."""
        problem = _output_placeholders(output) or ("has a '{' or '}' left over" if "{" in output or "}" in output else None)
        if problem:
            known = ", ".join(f"{{{name}}}" for name in OUTPUT_PLACEHOLDERS)
            raise ValueError(f"{problem}; the only placeholder is {known}")
        return output


def _output_placeholders(output: str) -> str | None:
    """Why `output`'s placeholders cannot be filled (an unknown name, unbalanced braces), or None."""
    import string

    try:
        names = [name for _, name, _, _ in string.Formatter().parse(output) if name is not None]
    except ValueError:
        return "has unbalanced braces"
    unknown = [name for name in names if name not in OUTPUT_PLACEHOLDERS]
    return f"has unknown placeholder {', '.join(f'{{{name}}}' for name in unknown)}" if unknown else None
