"""`tiny-captioner`: a random BLIP captioning model built offline into the cache, so `data caption` and its tests run
without the Hub.

It has BLIP's architecture and folder layout (config, safetensors weights, a BERT word-piece vocabulary, the PIL image
processor) at about 250 KB and loads through the same code as Salesforce/blip-image-captioning-base. Its captions are
random characters: only the plumbing around them is real.
"""

from __future__ import annotations

import string
from pathlib import Path

TINY_CAPTIONER = "tiny-captioner"
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


def tiny_captioner_folder() -> str:
    """The tiny captioner's folder in the cache, built on first use."""
    from archdiff.eval.tiny_models import write_model_atomically
    from archdiff.paths import cache_dir

    folder = cache_dir() / "tiny" / "captioner"
    if not (folder / "config.json").is_file():
        write_model_atomically(folder, _captioner)
    return str(folder)
