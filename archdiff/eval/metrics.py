"""Metric maths for `archdiff eval`: features in, python numbers out (feature extraction and model loading live elsewhere).

torchmetrics computes FD and KID: both of its classes take any nn.Module as the feature extractor, so precomputed
features go through an identity module and its own formulas do the work. CLIP score, diversity and the Vendi score are
a few lines each on embeddings (torchmetrics' CLIPScore only takes images and text through a loaded model).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch

from archdiff.errors import UserError


class _Precomputed(torch.nn.Module):
    """The identity as torchmetrics' feature extractor; `num_features` spares it probing with a dummy image."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _features(x, name: str, min_rows: int = 2) -> torch.Tensor:
    """A float64 (N, D) matrix; too few rows is the user's setting (--num-images, --seeds), so a UserError."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.dim() != 2:
        raise ValueError(f"{name}: expected an (N, D) feature matrix, got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise UserError(f"{name}: {x.shape[0]} image(s); this metric needs at least {min_rows}: ask for more images or seeds")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: features hold NaN or infinite values")
    return x


def _same_width(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real features have {real.shape[1]} dimensions, generated ones {fake.shape[1]}")


def frechet_distance(real, fake) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception's).

    torchmetrics' FrechetInceptionDistance with an identity extractor: it accumulates in float64 and takes
    Tr sqrt(S1 S2) from the eigenvalues of the product. Clamped at 0: it is a squared distance, and a set against
    itself comes out as float noise around 0.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _features(real, "real"), _features(fake, "generated")
    _same_width(real, fake)
    fid = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return max(0.0, float(fid.compute()))


def kernel_distance(
    real, fake, subsets: int = 100, subset_size: int = 1000, degree: int = 3, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and std over random subsets of the unbiased MMD² with the kernel (x·y/d + 1)^degree.

    Unbiased, so near 0 (possibly slightly negative) for two samples of one distribution even at small sizes, which
    is why it suits a few hundred images better than FD. subset_size is capped at the smaller set (as clean-fid does);
    at the cap every subset is a whole set, so the std is 0: pass a smaller subset_size for a spread.
    torchmetrics' KernelInceptionDistance draws the subsets from torch's global generator, seeded here and restored.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _features(real, "real"), _features(fake, "generated")
    _same_width(real, fake)
    if subsets < 1 or subset_size < 2:
        raise UserError(f"KID needs at least 1 subset of at least 2 images (got {subsets} subsets of {subset_size})")
    size = min(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():  # "will save all extracted features in buffer": they are in memory already
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size, degree=degree)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return float(mean), float(std)


def clip_score(image_embeds, text_embeds) -> torch.Tensor:
    """Per pair 100 * max(cos(image, text), 0): torchmetrics' CLIPScore definition, from embeddings already computed."""
    image, text = _features(image_embeds, "image embeddings", 1), _features(text_embeds, "text embeddings", 1)
    if image.shape != text.shape:
        raise ValueError(f"image embeddings {tuple(image.shape)} and text embeddings {tuple(text.shape)} do not pair up")
    cos = torch.nn.functional.cosine_similarity(image, text, dim=1)
    return 100 * cos.clamp(min=0)


def _unit_rows(features) -> torch.Tensor:
    return torch.nn.functional.normalize(_features(features, "features"), dim=1)


def pairwise_diversity(features) -> float:
    """Mean cosine distance (1 - cos) over all pairs of one prompt's images across seeds: 0 when every seed draws the same."""
    unit = _unit_rows(features)
    n = unit.shape[0]
    distance = (1 - unit @ unit.T).clamp(min=0)
    return float(distance.triu(diagonal=1).sum() / (n * (n - 1) / 2))


def vendi_score(features) -> float:
    """Vendi score: exp(entropy of the eigenvalues of K/n), K the cosine-similarity kernel; 1 for identical, n for orthogonal.

    The effective number of distinct images. K/n = U Uᵀ/n shares its non-zero eigenvalues with Uᵀ U/n, so the smaller of the
    two is decomposed (D x D when there are more images than feature dimensions).
    """
    unit = _unit_rows(features)
    n, d = unit.shape
    gram = unit.T @ unit if d < n else unit @ unit.T
    eigenvalues = torch.linalg.eigvalsh(gram / n).clamp(min=0)
    eigenvalues = eigenvalues[eigenvalues > 0]
    return float(torch.exp(-(eigenvalues * eigenvalues.log()).sum()))


def best_checkpoint(rows: Sequence[Mapping], metric: str, higher_is_better: bool) -> Mapping:
    """The row with the best finite value of metric (the earliest on a tie); rows without it or with NaN are passed over."""
    scored = [row for row in rows if isinstance(row.get(metric), (int, float)) and math.isfinite(row[metric])]
    if not scored:
        raise UserError(f"no checkpoint has a finite {metric}: evaluate with that metric first")
    pick = max if higher_is_better else min
    return pick(scored, key=lambda row: row[metric])
