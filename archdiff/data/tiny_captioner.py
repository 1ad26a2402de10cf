"""`tiny-captioner` and `tiny-vlm-captioner`: random captioning models built offline into the cache, so `data caption`
and its tests run without the Hub.

`tiny-captioner` has BLIP's architecture and folder layout (config, safetensors weights, a BERT word-piece vocabulary,
the PIL image processor) at about 250 KB and loads through the same code as Salesforce/blip-image-captioning-base.
`tiny-vlm-captioner` is a LLaVA (CLIP vision tower, Llama decoder, chat template, about 200 KB): an instruction model
taken through the image-text-to-text path that also runs Qwen-VL, Florence-2 or SmolVLM. Their captions are random
characters: only the plumbing around them is real.
"""

from __future__ import annotations

import string
from pathlib import Path

TINY_CAPTIONER = "tiny-captioner"
TINY_VLM_CAPTIONER = "tiny-vlm-captioner"
TINY_IMAGE_SIZE = 32  # 4x4 patches of 8 px
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")  # BLIP's decoder starts from [DEC]
_TINY_LAYERS = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def _captioner(folder: Path) -> None:
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    torch.manual_seed(0)
    pieces = list(string.ascii_lowercase + string.digits)
    vocab = [*_SPECIAL, *pieces, *(f"##{piece}" for piece in pieces), ".", ","]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]", model_max_length=64)
    text = BlipTextConfig(
        vocab_size=len(tokenizer),
        encoder_hidden_size=32,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **_TINY_LAYERS,
    )
    vision = BlipVisionConfig(image_size=TINY_IMAGE_SIZE, patch_size=8, projection_dim=32, **_TINY_LAYERS)
    config = BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    # The PIL image processor (no torchvision here); BLIP's own resize-to-square, scaled down.
    image_processor = BlipImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    BlipProcessor(image_processor, tokenizer).save_pretrained(folder)


def _vlm_captioner(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(0)
    characters = string.ascii_lowercase + string.digits + " .,"
    vocabulary = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(characters)}, merges=[]))
    vocabulary.decoder = decoders.Fuse()  # characters back into words, without spaces between them
    vocabulary.add_special_tokens(["<pad>", "<s>", "</s>", "<image>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=vocabulary,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    chat = (  # LLaVA-1.5's format: USER: <image>\nprompt ASSISTANT:
        "{% for message in messages %}{{ message['role'].upper() }}: {% if message['content'] is string %}"
        "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %} {% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    images = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    processor = LlavaProcessor(  # one token per 8-px patch; the CLIP class token is dropped ("default")
        images,
        tokenizer,
        chat_template=chat,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    vision = {"model_type": "clip_vision_model", "image_size": TINY_IMAGE_SIZE, "patch_size": 8, "projection_dim": 32}
    text = {"model_type": "llama", "vocab_size": len(tokenizer), "num_key_value_heads": 2, "max_position_embeddings": 256}
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = LlavaConfig(
        vision_config=vision | _TINY_LAYERS,
        text_config=text | _TINY_LAYERS | ids,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


_BUILDERS = {TINY_CAPTIONER: ("captioner", _captioner), TINY_VLM_CAPTIONER: ("vlm-captioner", _vlm_captioner)}


def tiny_captioner_source(name: str) -> str:
    """The folder of a tiny captioner in the cache (built on first use); any other name (Hub id, folder) as it is."""
    from archdiff.eval.tiny_models import write_model_atomically
    from archdiff.paths import cache_dir

    if name not in _BUILDERS or Path(name).exists():
        return name
    subfolder, build = _BUILDERS[name]
    folder = cache_dir() / "tiny" / subfolder
    if not (folder / "config.json").is_file():
        write_model_atomically(folder, build)
    return str(folder)
