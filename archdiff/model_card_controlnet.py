"""The model card's sections for a ControlNet run: the control type it expects, its recipe, and how to feed it."""

from __future__ import annotations

import json
import shlex
from typing import Any

from archdiff.model_card import base_source, example_prompt, public_name, recipe_table, training_rows
from archdiff.run_files import LORA_WEIGHTS

_OPENCV = " (needs OpenCV: `pip install 'archdiff[controls]'`)"
_CONTROL_MAPS = {  # data.control.type: the map it expects; what to feed `archdiff sample --control-type TYPE`, which does what
    "drawing": ("white lines on black, every stroke one width", "a sketch (dark lines on light paper)", "makes that map of it"),
    "lines": ("white straight line segments on black (MLSD style)", "a photo or drawing", "keeps its straight lines" + _OPENCV),
    "canny": ("Canny edges, white on black", "a photo or render", "runs `cv2.Canny(image, {low}, {high})` on it" + _OPENCV),
    "none": ("control images used as given, no map made of them", "an image like its training controls", "uses it as it is"),
}


def control_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    return (recipe.get("data") or {}).get("control") or {}


def control_section(recipe: dict[str, Any]) -> str:
    control = control_settings(recipe)
    kind = str(control.get("type", "none"))
    looks, image, does = _CONTROL_MAPS.get(kind, ("as in its training data", "an image", "makes its map"))
    does = does.format(low=control.get("canny_low", 100), high=control.get("canny_high", 200))
    return (
        f"## Control image\n\nControl type `{kind}`: {looks}. To draw from your own image, feed {image} through "
        f"`archdiff sample --control-type {kind}`, which {does}. Trained and validated at conditioning scale "
        f"{(recipe.get('controlnet') or {}).get('scale', 1.0)} (`controlnet_conditioning_scale`)."
    )


def controlnet_recipe_section(recipe: dict[str, Any], base: str) -> str:
    net, lora = recipe.get("controlnet") or {}, recipe.get("lora") or {}
    init = f"from `{public_name(str(net['init']))}`" if net.get("init") else "from a copy of the base UNet's encoder"
    weights = f"a LoRA (rank {a.get('rank')}, alpha {a.get('alpha')}), merged" if (a := net.get("lora")) else "all weights"
    rows = [
        ("Base", f"`{public_name(base)}`"),
        ("ControlNet", f"{init}, {weights}"),
        ("Control type", f"`{control_settings(recipe).get('type', 'none')}`"),
        ("Conditioning scale", str(net.get("scale", 1.0))),
    ]
    if net.get("unet_lora"):
        rows.append(("UNet LoRA", f"rank {lora.get('rank')}, alpha {lora.get('alpha')}"))
    if net.get("style_lora"):
        rows.append(("Style LoRA", f"`{public_name(str(net['style_lora']))}`, frozen"))
    return recipe_table(rows + training_rows(recipe))


def controlnet_usage_section(recipe: dict[str, Any], base: str, repo: str, family, lora: bool, triggers: list[str]) -> str:
    """diffusers code (the ControlNet from the repo root) and the archdiff command that makes the control map itself."""
    pipeline = family.pipeline.replace("Pipeline", "ControlNetPipeline")
    validation, net = recipe.get("validation") or {}, recipe.get("controlnet") or {}
    kind = str(control_settings(recipe).get("type", "none"))
    prompt, scale = example_prompt(recipe, triggers), net.get("scale", 1.0)
    source, note = base_source(base)
    load_lora = f"pipe.load_lora_weights({json.dumps(repo)}, weight_name={json.dumps(LORA_WEIGHTS)})\n" if lora else ""
    code = (
        f"import torch\nfrom diffusers import ControlNetModel, {pipeline}\nfrom diffusers.utils import load_image\n\n"
        f"controlnet = ControlNetModel.from_pretrained({json.dumps(repo)}, dtype=torch.float16)\n{note}"
        f"pipe = {pipeline}.from_pretrained({json.dumps(source)}, controlnet=controlnet, dtype=torch.float16)"
        f'.to("cuda")\n{load_lora}'
        f'control = load_image("control.png")  # a `{kind}` map: {_CONTROL_MAPS.get(kind, ("as trained",))[0]}\n'
        f"image = pipe({json.dumps(prompt)}, image=control, controlnet_conditioning_scale={scale}, "
        f"num_inference_steps={validation.get('steps', 25)}, guidance_scale={validation.get('guidance', 7.5)}).images[0]\n"
        'image.save("sample.png")'
    )
    extra = (f" --lora {repo}" if lora else "") + (f" --control-scale {scale}" if scale != 1.0 else "")
    command = (
        f"archdiff sample {shlex.quote(prompt)} --base {shlex.quote(source)} --controlnet {repo} "
        f"--control sketch.png --control-type {kind}{extra}"
    )
    archdiff = f"archdiff makes the `{kind}` map of your image (saved beside the results) and draws from it"
    return (
        f"## Use it with diffusers\n\n```python\n{code}\n```\n\n## Use it with archdiff\n\n{archdiff}:\n\n```bash\n{command}\n```"
    )
