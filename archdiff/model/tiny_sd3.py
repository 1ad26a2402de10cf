"""SD 3.5's pipeline built offline (family "sd3"): an MMDiT transformer, a 16-channel VAE, two CLIP text encoders
with projections and a T5 encoder, and a flow-matching scheduler; tiny, or SD 3.5 Medium's layout with random weights.

Kept apart from model/tiny.py (which registers it) because SD3 needs its own T5 tokenizer and transformer layouts.
"""

from __future__ import annotations

import string
from pathlib import Path

# SD 3.5 Medium's transformer config (stabilityai/stable-diffusion-3.5-medium), checked by parameter count in the tests.
_SD35M_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
# Two layers, one with MMDiT-X's second attention, 16 wide; 64 patch rows cover 1024 px images (128 latents / patch 2).
_TINY_TRANSFORMER = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "caption_projection_dim": 16,  # = heads * head dim: the caption joins the image tokens' width
    "out_channels": 16,
    "pos_embed_max_size": 64,
    "dual_attention_layers": (0,),
    "qk_norm": "rms_norm",
}
# T5 v1.1 XXL's encoder (google/t5-v1_1-xxl), which SD 3.x uses as text_encoder_3.
_T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_layers": 24, "num_heads": 64, "vocab_size": 32128}
_TINY_T5 = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 2, "num_heads": 4}  # d_model = the tiny joint_attention_dim
_TINY_CLIP_WIDTH = 16  # both tiny CLIPs: their summed width (padded up to T5's by the pipeline) must not pass T5's
# SD3's VAE: 16 latent channels, no quant convs, and its own latent scale and shift.
_SD3_LATENTS = {
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
}
_T5_SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5's own vocabulary
_T5_MAX_LENGTH = 256  # the pipeline's default max_sequence_length


def write_t5_tokenizer(folder: Path):
    """A T5 tokenizer written without a download: a Unigram vocabulary of single printable characters.

    ASCII and Latin-1 text tokenizes character by character; anything else becomes <unk>, as in real T5.
    The pre-tokenizer and decoder are the ones T5Tokenizer rebuilds on loading, so ids round-trip."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    chars = sorted(set(string.printable.strip()) | {chr(c) for c in range(0xA1, 0x100)} - {"\xad"})
    vocab = [*((token, 0.0) for token in _T5_SPECIAL), ("▁", -1.0), *((c, -2.0) for c in chars)]
    backend = Tokenizer(Unigram(vocab, unk_id=_T5_SPECIAL.index("<unk>")))
    metaspace = {"replacement": "▁", "prepend_scheme": "always", "split": True}
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(**metaspace)])
    backend.decoder = decoders.Metaspace(**metaspace)
    eos = ("</s>", _T5_SPECIAL.index("</s>"))
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[eos])
    tokenizer = T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=_T5_MAX_LENGTH,
        extra_ids=0,  # T5's <extra_id_*> sentinels serve span-corruption pretraining only
    )
    tokenizer.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def _t5_encoder(tokenizer, full: bool):
    from transformers import T5Config, T5EncoderModel

    layout = _T5_XXL if full else {**_TINY_T5, "vocab_size": len(tokenizer)}
    return T5EncoderModel(
        T5Config(
            **layout,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )


def sd3_pipeline(folder: Path, family: str, full: bool):
    """SD 3.5's layout: CLIP-L and CLIP-bigG (pooled projections summed into the transformer's conditioning, hidden
    states joined and padded to T5's width) beside T5, a rectified-flow scheduler shifted by 3 as SD3 trains."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from archdiff.model.tiny import random_vae, tiny_text_config, write_tokenizer_files

    torch.manual_seed(0)
    tokenizers = []
    for name in ("tokenizer", "tokenizer_2"):
        write_tokenizer_files(folder / name)
        tokenizers.append(CLIPTokenizer.from_pretrained(folder / name, model_max_length=77))
    text_encoders = [
        CLIPTextModelWithProjection(tiny_text_config(tokenizer, _TINY_CLIP_WIDTH, real=real if full else None))
        for tokenizer, real in zip(tokenizers, ("clip-l", "openclip-bigg"), strict=True)
    ]
    tokenizer_3 = write_t5_tokenizer(folder / "tokenizer_3")
    text_encoder_3 = _t5_encoder(tokenizer_3, full)
    layout = _SD35M_TRANSFORMER if full else {**_TINY_TRANSFORMER, "joint_attention_dim": text_encoder_3.config.d_model}
    transformer = SD3Transformer2DModel(
        **{**layout, "pooled_projection_dim": sum(encoder.config.projection_dim for encoder in text_encoders)}
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=random_vae(family, full, **_SD3_LATENTS),
        text_encoder=text_encoders[0],
        tokenizer=tokenizers[0],
        text_encoder_2=text_encoders[1],
        tokenizer_2=tokenizers[1],
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
        image_encoder=None,
        feature_extractor=None,
    )
