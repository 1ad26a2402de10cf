"""SDXL's conditioning without training: time ids, the two-encoder text embedding, and fp16 only with a fixed VAE."""

import pytest
import torch

from archdiff.config import load_recipe
from archdiff.errors import UserError
from archdiff.model.base import load_components, resolve_base
from archdiff.model.families import encode_text_sdxl, sdxl_time_ids
from archdiff.train.checks import check_family_options


def test_time_ids_are_original_size_crop_and_bucket_height_width():
    original = torch.tensor([[600, 1000], [64, 64]])
    crop = torch.tensor([[0, 12], [3, 0]])
    ids = sdxl_time_ids(original, crop, bucket=(80, 48))  # buckets are (width, height)
    assert ids.tolist() == [[600, 1000, 0, 12, 48, 80], [64, 64, 3, 0, 48, 80]]


def test_two_encoder_embedding_matches_the_sdxl_pipeline():
    from diffusers import StableDiffusionXLPipeline

    base = resolve_base("tiny-sdxl")
    parts = load_components(base)
    pipe = StableDiffusionXLPipeline.from_pretrained(base.source, add_watermarker=False)
    prompt = "brick facade, 4 storeys"
    ids = [
        t(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        for t in (parts.tokenizer, parts.tokenizer_2)
    ]
    with torch.no_grad():
        embeddings, pooled = encode_text_sdxl(parts.text_encoder, parts.text_encoder_2, *ids)
        expected, _, expected_pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    assert embeddings.shape[-1] == parts.unet.config.cross_attention_dim == 32 + 48
    assert torch.equal(embeddings, expected) and torch.equal(pooled, expected_pooled)


def test_fp16_on_sdxl_is_refused_without_a_fixed_vae():
    recipe = load_recipe("demo-tiny", ["memory.mixed_precision=fp16"])
    check_family_options(recipe, "sd15")  # fine on SD 1.x
    with pytest.raises(UserError, match=r"memory.mixed_precision=fp16 on SDXL.*set vae: .*madebyollin/sdxl-vae-fp16-fix"):
        check_family_options(recipe, "sdxl")
    fixed = load_recipe("demo-tiny", ["memory.mixed_precision=fp16", "vae=madebyollin/sdxl-vae-fp16-fix"])
    check_family_options(fixed, "sdxl")
