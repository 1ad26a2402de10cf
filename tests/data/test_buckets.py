"""Aspect-ratio buckets: which shapes exist, where an image goes, how it is resized and cropped, how batches are drawn."""

import itertools
import random
from collections import Counter

import pytest

from archdiff.data.buckets import BucketBatchSampler, assign_bucket, cover_size, crop_offsets, make_buckets

SD_BUCKETS = make_buckets(512 * 512, 64, 4.0)


def take(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def test_sd_buckets_span_square_wide_and_tall_within_area_step_and_aspect():
    assert {(512, 512), (1024, 256), (256, 1024)} <= set(SD_BUCKETS)
    assert len(set(SD_BUCKETS)) == len(SD_BUCKETS)
    for width, height in SD_BUCKETS:
        assert width % 64 == 0 and height % 64 == 0
        assert width * height <= 512 * 512
        assert max(width, height) / min(width, height) <= 4.0
    aspects = [width / height for width, height in SD_BUCKETS]
    assert aspects == sorted(aspects)


def test_no_bucket_can_grow_a_side_by_a_step_and_the_set_is_mirror_symmetric():
    for width, height in SD_BUCKETS:
        assert width * (height + 64) > 512 * 512 or height * (width + 64) > 512 * 512
        assert (height, width) in SD_BUCKETS


def test_small_area_buckets():
    buckets = make_buckets(64 * 64, 16, 4.0)
    assert {(64, 64), (128, 32), (32, 128)} <= set(buckets)
    assert all(width * height <= 64 * 64 for width, height in buckets)


def test_max_aspect_one_leaves_only_the_square():
    assert make_buckets(512 * 512, 64, 1.0) == [(512, 512)]


def test_no_bucket_fitting_is_an_error():
    with pytest.raises(ValueError, match="no bucket"):
        make_buckets(32 * 32, 64, 4.0)


@pytest.mark.parametrize(
    ("size", "shape"), [((2000, 500), "wide"), ((400, 1200), "tall"), ((700, 700), "square"), ((3000, 2990), "square")]
)
def test_assign_bucket_follows_the_image_shape(size, shape):
    width, height = assign_bucket(*size, SD_BUCKETS)
    if shape == "wide":
        assert width / height >= 3
    elif shape == "tall":
        assert height / width >= 2
    else:
        assert (width, height) == (512, 512)


def test_assign_bucket_tie_goes_to_the_larger_bucket():
    # 2:1 is exactly as far (in log aspect) from 4:1 as from 1:1
    assert assign_bucket(200, 100, [(64, 64), (64, 16)]) == (64, 64)
    assert assign_bucket(200, 100, [(32, 32), (128, 32)]) == (128, 32)


def test_cover_size_covers_the_bucket_exactly_on_one_side_and_keeps_the_aspect():
    rng = random.Random(0)
    for _ in range(2000):
        width, height = rng.randint(50, 5000), rng.randint(50, 5000)
        bucket = assign_bucket(width, height, SD_BUCKETS)
        resized = cover_size(width, height, bucket)
        assert resized[0] >= bucket[0] and resized[1] >= bucket[1]
        bound_width = bucket[0] / width >= bucket[1] / height
        assert resized[0] == bucket[0] if bound_width else resized[1] == bucket[1]  # no larger than needed
        free, exact = (resized[1], height * resized[0] / width) if bound_width else (resized[0], width * resized[1] / height)
        assert abs(free - exact) <= 0.5
        cropped = 1 - bucket[0] * bucket[1] / (resized[0] * resized[1])
        least = min(1 - min(w * height / (h * width), h * width / (w * height)) for w, h in SD_BUCKETS)
        assert abs(cropped - least) <= 1 / min(bucket)  # no other bucket would lose less of the image (up to a pixel)


def test_cover_size_of_an_exact_fit_is_the_bucket_and_small_images_are_upscaled():
    assert cover_size(1024, 256, (1024, 256)) == (1024, 256)
    assert cover_size(100, 100, (512, 512)) == (512, 512)
    assert cover_size(300, 200, (576, 448)) == (672, 448)  # 96 px cropped away: 3:2 lies between two buckets
    assert cover_size(1200, 500, (768, 320)) == (768, 320)
    assert cover_size(1210, 500, (768, 320)) == (774, 320)  # near a bucket's aspect: a few pixels, under one step


def test_crop_offsets_centre_and_random_stay_inside():
    rng = random.Random(1)
    assert crop_offsets((600, 520), (512, 512), True, rng) == (4, 44)
    offsets = {crop_offsets((600, 520), (512, 512), False, rng) for _ in range(500)}
    assert all(0 <= top <= 8 and 0 <= left <= 88 for top, left in offsets)
    assert {top for top, _ in offsets} == set(range(9))
    assert crop_offsets((512, 512), (512, 512), False, rng) == (0, 0)
    with pytest.raises(ValueError, match="does not cover"):
        crop_offsets((500, 512), (512, 512), True, rng)


def mixed_buckets(counts):
    """sample_buckets with counts[bucket] samples of each bucket, interleaved as a real dataset would be."""
    samples = [bucket for bucket, count in counts.items() for _ in range(count)]
    random.Random(2).shuffle(samples)
    return samples


EVEN = mixed_buckets({(512, 512): 12, (768, 320): 8, (320, 768): 4})
UNEVEN = mixed_buckets({(512, 512): 13, (768, 320): 5, (320, 768): 1})


@pytest.mark.parametrize("samples", [EVEN, UNEVEN])
def test_every_batch_is_full_and_from_one_bucket(samples):
    sampler = BucketBatchSampler(samples, batch_size=4, seed=0)
    for batch in take(sampler, 3 * sampler.batches_per_epoch):
        assert len(batch) == 4
        assert len({samples[index] for index, _ in batch}) == 1


def test_an_even_epoch_holds_every_sample_exactly_once_and_is_tagged_with_its_epoch():
    sampler = BucketBatchSampler(EVEN, batch_size=4, seed=0)
    assert sampler.batches_per_epoch == len(sampler) == 6
    for epoch in range(2):
        batches = take(sampler, 2 * 6)[epoch * 6 : (epoch + 1) * 6]
        keys = [key for batch in batches for key in batch]
        assert sorted(index for index, _ in keys) == list(range(len(EVEN)))
        assert {tag for _, tag in keys} == {epoch}


def test_an_uneven_epoch_still_holds_every_sample():
    sampler = BucketBatchSampler(UNEVEN, batch_size=4, seed=0)
    assert sampler.batches_per_epoch == 4 + 2 + 1
    seen = Counter(index for batch in take(sampler, sampler.batches_per_epoch) for index, _ in batch)
    assert set(seen) == set(range(len(UNEVEN)))


def test_a_bucket_smaller_than_the_global_batch_repeats_its_samples_to_fill_it():
    samples = [(512, 512)] * 3
    sampler = BucketBatchSampler(samples, batch_size=2, seed=0, num_processes=4)
    assert sampler.batches_per_epoch == 1
    batch = take(sampler, 1)[0]
    assert len(batch) == 2 and {index for index, _ in batch} <= {0, 1, 2}
    whole = [index for rank in range(4) for index, _ in take(BucketBatchSampler(samples, 2, 0, 4, rank), 1)[0]]
    assert sorted(Counter(whole).values()) == [2, 3, 3]  # 8 slots over 3 samples: each at least twice


def test_processes_share_the_bucket_and_get_disjoint_samples_at_every_step():
    ranks = [BucketBatchSampler(EVEN, batch_size=2, seed=5, num_processes=2, process_index=rank) for rank in range(2)]
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch == 6
    steps = list(zip(*(take(rank, 12) for rank in ranks), strict=True))
    for first, second in steps:
        assert {EVEN[index] for index, _ in first + second} == {EVEN[first[0][0]]}
        assert not {index for index, _ in first} & {index for index, _ in second}
    epoch_zero = [index for first, second in steps[:6] for index, _ in first + second]
    assert sorted(epoch_zero) == list(range(len(EVEN)))


def test_same_seed_same_batches_other_seed_or_epoch_other_order():
    first = take(BucketBatchSampler(EVEN, 4, seed=3), 12)
    assert first == take(BucketBatchSampler(EVEN, 4, seed=3), 12)
    assert first != take(BucketBatchSampler(EVEN, 4, seed=4), 12)
    epoch_zero = [index for batch in first[:6] for index, _ in batch]
    epoch_one = [index for batch in first[6:] for index, _ in batch]
    assert epoch_zero != epoch_one


@pytest.mark.parametrize("batches_done", [0, 1, 5, 7, 13, 20])
def test_start_at_continues_the_uninterrupted_sequence(batches_done):
    samples, per_epoch = UNEVEN, 7  # 7 and 14 start an epoch; the 10 batches after 1, 5, 13 and 20 cross one
    uninterrupted = take(BucketBatchSampler(samples, 4, seed=9), batches_done + 10)
    resumed = BucketBatchSampler(samples, 4, seed=9)
    assert resumed.batches_per_epoch == per_epoch
    resumed.start_at(batches_done)
    assert take(resumed, 10) == uninterrupted[batches_done:]


def test_start_at_applies_to_every_process():
    ranks = [BucketBatchSampler(EVEN, 2, seed=1, num_processes=2, process_index=rank) for rank in range(2)]
    for rank in ranks:
        rank.start_at(8)
    for rank, sampler in enumerate(ranks):
        assert take(sampler, 4) == take(BucketBatchSampler(EVEN, 2, 1, 2, rank), 12)[8:]


def test_sampler_rejects_empty_data_and_impossible_process_layouts():
    with pytest.raises(ValueError, match="no samples"):
        BucketBatchSampler([], 4, seed=0)
    with pytest.raises(ValueError, match="process 2 of 2"):
        BucketBatchSampler(EVEN, 4, seed=0, num_processes=2, process_index=2)
