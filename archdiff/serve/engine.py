"""The pipeline `archdiff serve` keeps in memory: one base, every LoRA loaded once as a named adapter, the ControlNets.

A request switches adapters with `set_adapters` (or turns them off), so two requests with the same settings draw the
same pixels whatever ran before. Everything a request names is checked against what the server was started with; a
request never names a path. Images come back as PNG bytes with the text chunks `archdiff sample` writes.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from archdiff.errors import UserError
from archdiff.serve.settings import Limits, named, unique_names

STEP = 64  # bucket side granularity for uploads sized without a run recipe (SD's latents divide by 8 twice over)


class RequestError(Exception):
    """A request the server refuses: `status` (400, 404, 413) and one line for `{"error": ...}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Stopped(Exception):
    """The request was interrupted between denoising steps (time limit, or the client left)."""


@dataclass(frozen=True)
class ServedLora:
    name: str
    location: tuple[str, str]  # (folder, weight file) for load_lora_weights
    trigger: str | None
    resolution: int | None
    step: int


@dataclass(frozen=True)
class ServedControlNet:
    name: str
    source: object  # archdiff.model.controlnet.ControlNetSource
    control_type: str
    scale: float
    canny: tuple[int, int]
    model: object = None


@dataclass
class Request:
    """A checked generate request: names resolved, images decoded, sizes settled."""

    prompt: str
    negative_prompt: str | None = None
    loras: list[tuple[str, float]] = field(default_factory=list)
    seed: int | None = None
    num_images: int = 1
    steps: int = 25
    guidance: float = 7.5
    width: int | None = None
    height: int | None = None
    init_image: Image.Image | None = None
    strength: float = 0.6
    control_image: Image.Image | None = None
    controlnet: str | None = None
    control_scale: float | None = None
    control_type: str | None = None


def _lora(text: str) -> ServedLora:
    from archdiff.lora_specs import LoraSpec, lora_recipe
    from archdiff.model_card import trigger_words

    where, name = named(text, "--lora")
    spec = LoraSpec.parse(where)
    recipe = lora_recipe(spec.path) if spec.path.is_dir() else {}
    data = recipe.get("data") or {}
    triggers = trigger_words(recipe)
    dreambooth = (recipe.get("dreambooth") or {}).get("instance_prompt")
    step = (data.get("buckets") or {}).get("step", STEP)
    return ServedLora(name, spec.location(), dreambooth or (triggers[0] if triggers else None), data.get("resolution"), step)


def _controlnet(text: str) -> ServedControlNet:
    from archdiff.controlnets import trained_settings
    from archdiff.model.controlnet import find_controlnet

    where, name = named(text, "--controlnet")
    source = find_controlnet(where)
    return ServedControlNet(name, source, *trained_settings(source))


class Engine:
    """One loaded pipeline and what it serves; `generate` runs one request (the caller serialises requests)."""

    def __init__(self, base_name: str, loras: list[str], controlnets: list[str], limits: Limits, device: str | None = None):
        from archdiff.lora_specs import LoraSpec, run_recipe
        from archdiff.model.base import resolve_base, safetensors_header
        from archdiff.model.controlnet import check_controlnet_fits
        from archdiff.model.lora_fit import check_lora_fits

        self.limits = limits
        self.loras = {lora.name: lora for lora in map(_lora, loras)}
        self.controlnets = {net.name: net for net in map(_controlnet, controlnets)}
        unique_names([named(text, "--lora")[1] for text in loras], "--lora")
        unique_names([named(text, "--controlnet")[1] for text in controlnets], "--controlnet")
        recipe = run_recipe([LoraSpec.parse(named(text, "--lora")[0]) for text in loras])
        recipe = recipe or next((net.source.recipe for net in self.controlnets.values() if net.source.recipe), {})
        vae = None if base_name else recipe.get("vae")  # the run's own `vae:` comes with its base, not with --base
        base_name = base_name or recipe.get("base")
        if not base_name:
            raise UserError("no --base given and no --lora or --controlnet run folder names one; pass --base (e.g. tiny-sd15)")
        self.base = resolve_base(str(base_name), vae)
        for lora in self.loras.values():
            header = safetensors_header(lora_file(lora), f"--lora '{lora.name}'")
            check_lora_fits(header, f"--lora '{lora.name}'", self.base)
        for net in self.controlnets.values():
            check_controlnet_fits(net.source, self.base)
        self._load(device)

    def _load(self, device: str | None) -> None:
        from diffusers import AutoPipelineForImage2Image, ControlNetModel

        from archdiff.errors import first_line
        from archdiff.model.families import FAMILIES
        from archdiff.model.lora import load_adapter
        from archdiff.sample import load_pipeline, quiet_loading

        self.pipe = load_pipeline(self.base.source, [], self.base.family, device=device, vae=self.base.vae)
        for lora in self.loras.values():
            try:
                with quiet_loading():
                    load_adapter(self.pipe, lora.location[0], lora.location[1], lora.name)
            except Exception as error:  # noqa: BLE001 - a LoRA that does not fit: one line naming it
                raise UserError(f"--lora '{lora.name}' could not be loaded onto the base: {first_line(error)}") from None
        for name, net in list(self.controlnets.items()):
            with quiet_loading():
                model = ControlNetModel.from_pretrained(net.source.source, dtype=self.pipe.dtype).to(self.pipe.device)
            self.controlnets[name] = ServedControlNet(net.name, net.source, net.control_type, net.scale, net.canny, model)
        self.img2img = AutoPipelineForImage2Image.from_pipe(self.pipe)
        self.img2img.set_progress_bar_config(disable=True)
        denoiser = getattr(self.pipe, FAMILIES[self.base.family].denoiser)  # a UNet, or SD 3.5's transformer
        self.default_side = denoiser.config.sample_size * self.pipe.vae_scale_factor

    def describe(self) -> dict:
        """What /v1/loras lists: names, never paths."""
        return {
            "loras": [
                {"name": lora.name, "base": self.base.name, "scale": 1.0, "trigger": lora.trigger, "resolution": lora.resolution}
                for lora in self.loras.values()
            ],
            "controlnets": [
                {"name": net.name, "control_type": net.control_type, "scale": net.scale} for net in self.controlnets.values()
            ],
        }

    def check(self, request: Request) -> Request:
        """Names, counts and sizes against the server's limits and what it serves; sizes settled. RequestError if not."""
        limits = self.limits
        if not request.prompt.strip():
            raise RequestError(400, "prompt is empty")
        if len(request.prompt) > limits.prompt_chars or len(request.negative_prompt or "") > limits.prompt_chars:
            raise RequestError(413, f"prompt is longer than {limits.prompt_chars} characters")
        for what, value, top in (("num_images", request.num_images, limits.images), ("steps", request.steps, limits.steps)):
            if not 1 <= value <= top:
                raise RequestError(400, f"{what} must be between 1 and {top} (got {value})")
        if not 0 <= request.guidance <= limits.guidance:
            raise RequestError(400, f"guidance must be between 0 and {limits.guidance:g} (got {request.guidance})")
        for name, scale in request.loras:
            if name not in self.loras:
                served = ", ".join(self.loras) or "none"
                raise RequestError(404, f"no LoRA named '{name}' here; GET /v1/loras lists them ({served})")
            if not -4 <= scale <= 4:
                raise RequestError(400, f"LoRA '{name}' scale must be between -4 and 4 (got {scale})")
        if len({name for name, _ in request.loras}) != len(request.loras):
            raise RequestError(400, "a LoRA is named twice in loras")
        if request.init_image is not None and request.control_image is not None:
            raise RequestError(400, "init_image and control_image cannot be combined (no ControlNet img2img); send one")
        if not 0 < request.strength <= 1:
            raise RequestError(400, f"strength must be above 0 and at most 1 (got {request.strength})")
        if request.init_image is not None and int(request.steps * request.strength) < 1:
            raise RequestError(400, f"steps x strength leaves img2img no step ({request.steps} x {request.strength}): raise one")
        self._check_control(request)
        return self._settle_size(request)

    def _check_control(self, request: Request) -> None:
        from archdiff.data.controls import CONTROL_TYPES

        if request.control_image is None:
            if request.controlnet is not None:
                raise RequestError(400, "controlnet needs a control_image to follow")
            return
        if request.controlnet is None:
            if len(self.controlnets) != 1:
                raise RequestError(400, f"control_image needs a controlnet name ({', '.join(self.controlnets) or 'none served'})")
            request.controlnet = next(iter(self.controlnets))
        if request.controlnet not in self.controlnets:
            served = ", ".join(self.controlnets) or "none"
            raise RequestError(404, f"no ControlNet named '{request.controlnet}' here; GET /v1/loras lists them ({served})")
        if request.control_type is not None and request.control_type not in CONTROL_TYPES:
            raise RequestError(400, f"control_type must be one of {', '.join(CONTROL_TYPES)} (got '{request.control_type}')")
        if request.control_scale is not None and not 0 <= request.control_scale <= 4:
            raise RequestError(400, f"control_scale must be between 0 and 4 (got {request.control_scale})")

    def _settle_size(self, request: Request) -> Request:
        from archdiff.sample import fit_to_bucket

        lora = next((self.loras[name] for name, _ in request.loras), next(iter(self.loras.values()), None))
        resolution = (lora.resolution if lora else None) or self.default_side
        for what, side in (("width", request.width), ("height", request.height)):
            if side is not None and not (8 <= side <= self.limits.side and side % 8 == 0):
                raise RequestError(400, f"{what} must be a multiple of 8 between 8 and {self.limits.side} (got {side})")
        upload = request.init_image or request.control_image
        if upload is not None:
            fitted = fit_to_bucket(upload, request.width, request.height, resolution, lora.step if lora else STEP)
            request.width, request.height = fitted.size
            if request.init_image is not None:
                request.init_image = fitted
            else:
                request.control_image = fitted
        request.width, request.height = request.width or resolution, request.height or resolution
        if request.width * request.height > self.limits.pixels:
            size = f"{request.width}x{request.height}"
            raise RequestError(413, f"{size} is over the limit of {self.limits.pixels} pixels per image")
        return request

    def generate(self, request: Request, should_stop: Callable[[], bool]) -> tuple[list[bytes], dict]:
        """Draw a checked request; PNG bytes and the settings (with the seeds). Stopped when `should_stop()` turns true."""
        from archdiff.sample import generate

        seed = request.seed if request.seed is not None else random.randrange(2**31)
        seeds = list(range(seed, seed + request.num_images))
        drawing, guide = self._pipeline_for(request)
        if request.negative_prompt:
            guide["negative_prompt"] = request.negative_prompt

        def interrupt(pipe, step, timestep, tensors):
            if should_stop():
                pipe._interrupt = True  # diffusers' own flag: the loop stops before the next step
            return tensors

        images = generate(
            drawing, request.prompt, seeds, request.steps, request.guidance, request.width, request.height,
            request.init_image, request.strength, callback_on_step_end=interrupt, **guide,
        )  # fmt: skip
        if should_stop():
            raise Stopped
        settings = self._settings(request, seeds)
        return [_png(image, settings, seed) for image, seed in zip(images, seeds, strict=True)], settings

    def _pipeline_for(self, request: Request):
        from archdiff.controlnets import control_pipeline
        from archdiff.data.controls import extract_control
        from archdiff.sample import quiet_loading

        if request.loras:
            self.pipe.enable_lora()
            self.pipe.set_adapters([name for name, _ in request.loras], adapter_weights=[scale for _, scale in request.loras])
        elif self.loras:
            self.pipe.disable_lora()
        if request.control_image is not None:
            net = self.controlnets[request.controlnet]
            kind = request.control_type or net.control_type
            control = extract_control(request.control_image, kind, canny_low=net.canny[0], canny_high=net.canny[1])
            scale = net.scale if request.control_scale is None else request.control_scale
            with quiet_loading():  # from_pipe's dtype notes, at every request
                drawing = control_pipeline(self.pipe, net.model)
            return drawing, {"image": control, "controlnet_conditioning_scale": scale}
        return (self.img2img if request.init_image is not None else self.pipe), {}

    def _settings(self, request: Request, seeds: list[int]) -> dict:
        settings = {
            "prompt": request.prompt,
            "base": self.base.name,
            "lora": [f"{name}:{scale:g}" for name, scale in request.loras],
            "steps": request.steps,
            "guidance": request.guidance,
            "seeds": seeds,
            "width": request.width,
            "height": request.height,
        }
        if request.negative_prompt:
            settings["negative_prompt"] = request.negative_prompt
        if request.init_image is not None:
            settings |= {"init_image": "upload", "strength": request.strength}
        if request.control_image is not None:
            net = self.controlnets[request.controlnet]
            scale = net.scale if request.control_scale is None else request.control_scale
            settings |= {
                "control": ["upload"],
                "control_type": [request.control_type or net.control_type],
                "controlnet": [net.name],
                "control_scale": [scale],
            }
        return settings


def lora_file(lora: ServedLora):
    from pathlib import Path

    return Path(lora.location[0]) / lora.location[1]


def _png(image: Image.Image, settings: dict, seed: int) -> bytes:
    from archdiff.sample import png_info

    meta = {key: value for key, value in settings.items() if key != "seeds"} | {"seed": seed}
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(meta))
    return buffer.getvalue()
