"""LoKr and LoHa in LyCORIS's kohya key layout (`lora_unet_<module>.lokr_w1`, `.hada_w1_a`, ..., `.alpha`): what
ComfyUI, A1111/Forge and kohya's scripts load for these adapters.

peft scales every LoKr/LoHa delta by alpha / r. The loaders scale LoHa, and a LoKr with a factored w2, by alpha / (the
factor's rank), which matches; a LoKr whose factors are both stored whole is applied at scale 1 whatever its alpha,
so its w2 is written pre-multiplied by alpha / r (and its alpha left out, as LyCORIS writes it).
"""

from __future__ import annotations

PEFT_KEYS = {
    "LOKR": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "LOHA": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
}


def lycoris_unet_state_dict(tensors: dict, config: dict, kind: str, alpha_of) -> dict:
    """`tensors`: the UNet's peft keys (`<module>.lokr_w1`); `alpha_of(module)`: the module's alpha (alpha_pattern)."""
    import torch

    modules: dict[str, dict] = {}
    for key, tensor in tensors.items():
        module, _, name = key.rpartition(".")
        if name not in PEFT_KEYS[kind]:
            raise ValueError(f"unexpected {kind} tensor {key}")
        modules.setdefault(module, {})[name] = tensor
    result = {}
    for module, parts in modules.items():
        prefix = f"lora_unet_{module.replace('.', '_')}"
        alpha = float(alpha_of(module))
        rank = _rank(config, module)
        if kind == "LOKR" and "lokr_w2" in parts and "lokr_w1" in parts:
            parts = {**parts, "lokr_w2": parts["lokr_w2"] * (alpha / rank)}
        else:
            result[f"{prefix}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
        result.update({f"{prefix}.{name}": tensor.contiguous() for name, tensor in parts.items()})
    return result


def _rank(config: dict, module: str) -> int:
    pattern = config.get("rank_pattern") or {}
    matches = [rank for key, rank in pattern.items() if module.endswith(key)]
    return int(matches[0] if matches else config["r"])
