"""The eval metric maths against independent computations: closed forms, numpy references written differently, hand sums."""

import math

import numpy as np
import pytest
import torch

from archdiff.errors import UserError
from archdiff.eval.metrics import (
    best_checkpoint,
    clip_score,
    frechet_distance,
    kernel_distance,
    pairwise_diversity,
    vendi_score,
)


def _normal(n, mean, std, seed):
    """n samples of a Gaussian with the given per-dimension means and standard deviations (diagonal covariance)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(mean), generator=g, dtype=torch.float64) * torch.tensor(std) + torch.tensor(mean)


def _numpy_fd(x, y):
    """FD with Tr sqrt(S1 S2) = Tr sqrt(A S2 A), A = S1^(1/2): symmetric eigendecompositions only.

    torchmetrics instead takes the eigenvalues of the non-symmetric product S1 S2.
    """
    x, y = np.asarray(x), np.asarray(y)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(a @ s2 @ a), 0, None)).sum()
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


def _numpy_mmd2_unbiased(x, y, degree=3):
    """The unbiased MMD² of KID as explicit double loops over pairs."""
    x, y = np.asarray(x), np.asarray(y)
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** degree

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def _numpy_vendi(x):
    """exp(Shannon entropy) of the eigenvalues of the n x n cosine kernel / n, straight from the definition."""
    x = np.asarray(x, dtype=np.float64)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(u @ u.T / len(u))
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))


# --- Fréchet distance


def test_fd_of_a_set_with_itself_is_zero():
    x = _normal(300, [0.0, 1, 2, 3], [1.0, 2, 0.5, 1], seed=1)
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-9)
    wide = _normal(40, [0.0] * 64, [1.0] * 64, seed=2)  # more dimensions than images, as with 768-d features and few images
    assert frechet_distance(wide, wide) == pytest.approx(0, abs=1e-6)


def test_fd_of_gaussian_samples_matches_the_closed_form():
    # diagonal covariances: FD = |mu1 - mu2|² + sum_i (sigma1_i - sigma2_i)² = 1 + 0.25 + (1 - 2)² = 2.25
    mean1, std1 = [0.0, 0, 0, 0], [1.0, 1, 1.5, 0.5]
    mean2, std2 = [1.0, 0.5, 0, 0], [1.0, 2, 1.5, 0.5]
    closed = float(((np.array(mean1) - mean2) ** 2).sum() + ((np.array(std1) - std2) ** 2).sum())
    assert closed == pytest.approx(2.25)
    fd = frechet_distance(_normal(20000, mean1, std1, seed=3), _normal(20000, mean2, std2, seed=4))
    assert fd == pytest.approx(closed, abs=0.08)  # sampling error at N=20000 is ~0.03


@pytest.mark.parametrize("n, d", [(200, 6), (40, 64)])
def test_fd_matches_a_numpy_reference_and_is_symmetric(n, d):
    x = _normal(n, [0.0] * d, [1.0] * d, seed=5)
    y = _normal(n + 7, [0.3] * d, [0.5 + i / d for i in range(d)], seed=6)
    fd = frechet_distance(x, y)
    assert fd == pytest.approx(_numpy_fd(x.numpy(), y.numpy()), rel=1e-6)
    assert frechet_distance(y, x) == pytest.approx(fd, rel=1e-6)  # eigvals of a rank-deficient product: ~1e-8 apart
    assert frechet_distance(x.float(), y.float()) == pytest.approx(fd, rel=1e-4)  # float32 features are fine


# --- KID


def test_kid_unbiased_estimator_equals_the_double_loop():
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64) + 0.5
    # subset_size caps at 5 = both sets, so every subset is the whole set (in some order): the subsets are fixed
    mean, std = kernel_distance(x, y, subsets=4, subset_size=1000)
    assert mean == pytest.approx(_numpy_mmd2_unbiased(x.numpy(), y.numpy()), rel=1e-10)
    assert std == pytest.approx(0, abs=1e-12)
    mean2, _ = kernel_distance(x, y, subsets=1, subset_size=5, degree=2)
    assert mean2 == pytest.approx(_numpy_mmd2_unbiased(x.numpy(), y.numpy(), degree=2), rel=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_shifted():
    d = 8
    x = _normal(400, [0.0] * d, [1.0] * d, seed=8)
    same = _normal(300, [0.0] * d, [1.0] * d, seed=9)
    shifted = _normal(300, [0.5] * d, [1.0] * d, seed=10)
    mean_same, std_same = kernel_distance(x, same, subsets=50, subset_size=100)
    mean_shift, std_shift = kernel_distance(x, shifted, subsets=50, subset_size=100)
    assert abs(mean_same) < std_same  # 0 within the spread over subsets (unbiased: it may dip below 0)
    assert mean_shift > 0.3 and mean_shift > 3 * std_shift  # the cubic kernel makes subsets of 100 vary: std ~ mean / 5


def test_kid_is_seeded_and_leaves_the_global_generator_alone():
    x, y = _normal(60, [0.0] * 4, [1.0] * 4, seed=11), _normal(60, [0.2] * 4, [1.0] * 4, seed=12)
    torch.manual_seed(123)
    first = kernel_distance(x, y, subsets=10, subset_size=20, seed=3)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)
    assert kernel_distance(x, y, subsets=10, subset_size=20, seed=3) == first
    assert kernel_distance(x, y, subsets=10, subset_size=20, seed=4) != first


# --- CLIP score


def test_clip_score_by_hand():
    image = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    text = torch.tensor([[4.0, 3.0], [-1.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    # cos = 24/25, -1 (clamped to 0), 0, 1
    assert clip_score(image, text).tolist() == pytest.approx([96.0, 0.0, 0.0, 100.0])


def test_clip_score_refuses_unpaired_embeddings():
    with pytest.raises(ValueError, match="do not pair up"):
        clip_score(torch.ones(3, 4), torch.ones(2, 4))


# --- diversity


def test_identical_images_have_no_diversity_and_vendi_one():
    same = torch.tensor([[0.3, -1.2, 2.0]]).repeat(5, 1)
    assert pairwise_diversity(same) == pytest.approx(0, abs=1e-12)
    assert vendi_score(same) == pytest.approx(1, abs=1e-9)


def test_diversity_by_hand_and_vendi_of_orthogonal_features():
    three = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # cosine distances: 1, 1 - 1/sqrt(2), 1 - 1/sqrt(2)
    assert pairwise_diversity(three) == pytest.approx((1 + 2 * (1 - 1 / math.sqrt(2))) / 3)
    assert vendi_score(torch.eye(4) * torch.tensor([1.0, 2, 3, 4])) == pytest.approx(4)
    assert vendi_score(torch.eye(3, 10)) == pytest.approx(3)


@pytest.mark.parametrize("n, d", [(6, 10), (12, 3)])  # fewer and more images than dimensions (both decompositions)
def test_vendi_matches_the_definition(n, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n))
    assert vendi_score(x) == pytest.approx(_numpy_vendi(x.numpy()), rel=1e-9)


def test_a_collapsed_generator_scores_lowest_diversity():
    g = torch.Generator().manual_seed(13)
    facade = torch.randn(1, 32, generator=g)
    collapsed = facade.repeat(8, 1)  # the same image for every seed
    varied_a_little = facade + 0.3 * torch.randn(8, 32, generator=g)
    varied = torch.randn(8, 32, generator=g)
    diversity = [pairwise_diversity(s) for s in (collapsed, varied_a_little, varied)]
    vendi = [vendi_score(s) for s in (collapsed, varied_a_little, varied)]
    assert diversity == sorted(diversity) and diversity[0] == pytest.approx(0, abs=1e-12) and diversity[1] > 0.01
    assert vendi == sorted(vendi) and vendi[0] == pytest.approx(1) and vendi[2] > 4


# --- input checks and the best checkpoint


def test_one_image_is_a_user_error():
    with pytest.raises(UserError, match="at least 2"):
        pairwise_diversity(torch.ones(1, 4))
    with pytest.raises(UserError, match="at least 2"):
        frechet_distance(torch.ones(1, 4), torch.ones(5, 4))


def test_mismatched_feature_widths_are_refused():
    with pytest.raises(ValueError, match="dimensions"):
        kernel_distance(torch.ones(4, 3), torch.ones(4, 5))


def test_best_checkpoint():
    rows = [
        {"checkpoint": "base", "fd": 9.0, "clip": 20.0},
        {"checkpoint": 100, "fd": 4.0, "clip": float("nan")},
        {"checkpoint": 200, "fd": 4.0, "clip": 25.0},
        {"checkpoint": 300, "clip": 24.0},
    ]
    assert best_checkpoint(rows, "fd", higher_is_better=False)["checkpoint"] == 100  # earliest on a tie
    assert best_checkpoint(rows, "clip", higher_is_better=True)["checkpoint"] == 200  # NaN passed over
    with pytest.raises(UserError, match="no checkpoint has a finite kid"):
        best_checkpoint(rows, "kid", higher_is_better=False)
