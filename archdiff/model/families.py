"""What differs between the model families archdiff trains, behind one small interface each.

SD 1.x/2.x, SDXL and SD 3.5 differ in their pipeline class, their denoiser (a UNet or an MMDiT transformer), their
text encoders and how a caption becomes conditioning, the objective (DDPM noise or rectified flow) and the file
layouts other tools read. Everything else (data, buckets, caches, the loop, checkpoints) is the same code for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TEXT_ENTRIES = ("text_embeddings", "pooled_text_embeds", "t5_text_embeddings")  # what a family's text cache may hold
TOKEN_IDS = ("input_ids", "input_ids_2", "input_ids_3")  # a batch's token ids, one per text encoder
SD3_MAX_TEXT = 256  # T5 tokens SD 3.x reads (the pipeline's default max_sequence_length)


def _device(module):
    """Where a module's weights are; also for a DDP-wrapped encoder, which has no `.device`."""
    return next(module.parameters()).device


def encode_text(text_encoder, input_ids):
    """SD 1.x/2.x's conditioning (and T5's part of SD 3.x's): the encoder's last hidden states."""
    return text_encoder(input_ids.to(_device(text_encoder)), return_dict=False)[0]


def encode_text_sdxl(text_encoder, text_encoder_2, input_ids, input_ids_2):
    """As SDXL's pipeline encodes a prompt: both encoders' penultimate states side by side, and the second's pooled projection."""
    import torch

    first = text_encoder(input_ids.to(_device(text_encoder)), output_hidden_states=True)
    second = text_encoder_2(input_ids_2.to(_device(text_encoder_2)), output_hidden_states=True)
    return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds


def _sd3_clip_states(encoders: list, ids: list):
    """SD 3.x's two CLIPs: penultimate states side by side (before padding to T5's width), pooled projections joined."""
    import torch

    outputs = [
        encoder(tokens.to(_device(encoder)), output_hidden_states=True) for encoder, tokens in zip(encoders, ids, strict=True)
    ]
    return torch.cat([out.hidden_states[-2] for out in outputs], dim=-1), torch.cat([out.text_embeds for out in outputs], dim=-1)


def sdxl_time_ids(original_size, crop_top_left, bucket: tuple[int, int]):
    """Per sample (original h, w, crop top, left, target h, w): SDXL is told each image's size and crop, so
    upscaled or cropped training images do not teach it to draw blurry or cut-off buildings."""
    import torch

    width, height = bucket
    target = torch.tensor([height, width], dtype=original_size.dtype).expand(len(original_size), 2)
    return torch.cat([original_size, crop_top_left, target], dim=1)


@dataclass(frozen=True)
class Family:
    """SD 1.x/2.x: one CLIP text encoder, a UNet, the DDPM schedule."""

    name: str = "sd15"
    label: str = "SD 1.x/2.x"
    title: str = "Stable Diffusion"  # and `hub_tag`: how a model card names and tags it
    hub_tag: str = "stable-diffusion"
    pipeline: str = "StableDiffusionPipeline"
    denoiser: str = "unet"  # its subfolder, and the LoRA keys' prefix
    denoiser_class: str = "UNet2DConditionModel"
    denoiser_title: str = "UNet"  # how a model card names it
    scheduler_class: str = "DDPMScheduler"
    objective: str = "diffusion"  # diffusion (DDPM: epsilon or v) | flow (rectified flow): train/objective.py
    text_encoders: tuple[str, ...] = ("CLIPTextModel",)  # text_encoder, text_encoder_2, ... in order
    trainable_text: int = 1  # how many of them lora.text_encoder trains (SD 3.5: the two CLIPs, never T5)
    kohya: tuple[tuple[str, str], ...] | None = (("unet", "lora_unet"), ("text_encoder", "lora_te"))

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline)

    def pipeline_extras(self) -> dict[str, Any]:
        """Keyword arguments its pipeline takes when archdiff builds one (no safety checker, no watermark)."""
        return {"safety_checker": None, "requires_safety_checker": False}

    def text_entries(self, encoders: list, ids: list) -> dict:
        """What the text cache keeps of a batch of captions (one token-id tensor per encoder), by batch key:
        what `conditioning` reads back instead of running the encoders."""
        return {"text_embeddings": encode_text(encoders[0], ids[0])}

    def text_parts(self, batch: dict, encoders: list, device) -> dict:
        """`text_entries` of a batch: read from the text cache's entries when it carries them, else computed by the
        encoders from its token ids."""
        if "text_embeddings" in batch:
            return {key: value.to(device, non_blocking=True) for key, value in batch.items() if key in TEXT_ENTRIES}
        return self.text_entries(encoders, [batch[key] for key in TOKEN_IDS[: len(encoders)]])

    def conditioning(self, batch: dict, encoders: list, device, bucket: tuple[int, int], model) -> dict:
        """The denoiser's text conditioning for a batch of token ids (or cached embeddings); `model` the denoiser."""
        return {"encoder_hidden_states": self.text_parts(batch, encoders, device)["text_embeddings"]}

    def predict(self, model, noisy, timesteps, conditioning: dict, residuals: dict):
        added = conditioning.get("added_cond_kwargs")
        return model(noisy, timesteps, conditioning["encoder_hidden_states"], added_cond_kwargs=added, **residuals).sample


@dataclass(frozen=True)
class SDXLFamily(Family):
    """Two CLIP encoders (penultimate states side by side), pooled text and per-sample size/crop ids."""

    name: str = "sdxl"
    label: str = "SDXL"
    title: str = "Stable Diffusion XL"
    hub_tag: str = "stable-diffusion-xl"
    pipeline: str = "StableDiffusionXLPipeline"
    text_encoders: tuple[str, ...] = ("CLIPTextModel", "CLIPTextModelWithProjection")
    trainable_text: int = 2
    kohya: tuple[tuple[str, str], ...] | None = (
        ("unet", "lora_unet"),
        ("text_encoder", "lora_te1"),
        ("text_encoder_2", "lora_te2"),
    )

    def pipeline_extras(self) -> dict[str, Any]:
        return {"add_watermarker": False}

    def text_entries(self, encoders: list, ids: list) -> dict:
        embeddings, pooled = encode_text_sdxl(*encoders, *ids)
        return {"text_embeddings": embeddings, "pooled_text_embeds": pooled}

    def conditioning(self, batch: dict, encoders: list, device, bucket: tuple[int, int], model) -> dict:
        """Both encoders' states (or the text cache's, with the pooled one beside them) and the size/crop ids."""
        parts = self.text_parts(batch, encoders, device)
        embeddings, pooled = parts["text_embeddings"], parts["pooled_text_embeds"]
        time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], bucket).to(device, embeddings.dtype)
        return {"encoder_hidden_states": embeddings, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


@dataclass(frozen=True)
class SD3Family(Family):
    """SD 3.5: an MMDiT transformer on rectified flow; two CLIPs (pooled and per token) and T5, the sequences joined."""

    name: str = "sd3"
    label: str = "SD 3.5"
    title: str = "Stable Diffusion 3.5"
    hub_tag: str = "stable-diffusion-3"
    pipeline: str = "StableDiffusion3Pipeline"
    denoiser: str = "transformer"
    denoiser_class: str = "SD3Transformer2DModel"
    denoiser_title: str = "Transformer"
    scheduler_class: str = "FlowMatchEulerDiscreteScheduler"
    objective: str = "flow"
    text_encoders: tuple[str, ...] = ("CLIPTextModelWithProjection", "CLIPTextModelWithProjection", "T5EncoderModel")
    trainable_text: int = 2
    kohya: tuple[tuple[str, str], ...] | None = None  # ComfyUI and diffusers read the diffusers file itself

    def pipeline_extras(self) -> dict[str, Any]:
        return {}

    def text_entries(self, encoders: list, ids: list) -> dict:
        """The CLIPs' joined states and pooled projections; T5's states apart (absent under memory.t5: drop)."""
        clip, pooled = _sd3_clip_states(encoders[:2], ids[:2])
        t5 = {"t5_text_embeddings": encode_text(encoders[2], ids[2])} if len(encoders) > 2 else {}
        return {"text_embeddings": clip, "pooled_text_embeds": pooled, **t5}

    def conditioning(self, batch: dict, encoders: list, device, bucket: tuple[int, int], model) -> dict:
        """As StableDiffusion3Pipeline.encode_prompt: CLIP-L and CLIP-G penultimate states side by side, padded to T5's
        width, then T5's tokens after them; the pooled projections joined. Without T5 (memory.t5: drop) its part is
        zeros, which SD 3.5 was trained to accept. With the text cache, the same parts come from the batch."""
        import torch

        parts = self.text_parts(batch, encoders, device)
        clip, pooled, t5_states = parts["text_embeddings"], parts["pooled_text_embeds"], parts.get("t5_text_embeddings")
        if t5_states is None:
            width = getattr(model, "module", model).config.joint_attention_dim  # DDP wraps the model
            t5_states = torch.zeros(len(clip), SD3_MAX_TEXT, width, device=clip.device, dtype=clip.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1]))
        return {"encoder_hidden_states": torch.cat([clip, t5_states.to(clip.dtype)], dim=-2), "pooled_projections": pooled}

    def predict(self, model, noisy, timesteps, conditioning: dict, residuals: dict):
        return model(hidden_states=noisy, timestep=timesteps, **conditioning).sample


FAMILIES: dict[str, Family] = {family.name: family for family in (Family(), SDXLFamily(), SD3Family())}
