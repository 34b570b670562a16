"""The craft-text workload's data and scoring: rendered scenes, box matching, AP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.workloads import craft_text
from benchmarks.workloads.text_scenes import GAP, SceneRecipe, scenes

SMALL = SceneRecipe(width=128, height=96, min_words=2, max_words=5, min_size=10, max_size=20)


def test_scenes_are_deterministic_and_the_splits_differ():
    a, b = scenes(SMALL, 3, "val"), scenes(SMALL, 3, "val")
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.boxes, y.boxes)
    train = scenes(SMALL, 3, "train")
    assert not any(np.array_equal(x.image, y.image) for x, y in zip(a, train, strict=True))


def test_word_boxes_lie_inside_the_image_apart_and_around_ink():
    for scene in scenes(SMALL, 10, "val"):
        assert scene.image.shape == (SMALL.height, SMALL.width, 3)
        assert len(scene.boxes) <= SMALL.max_words
        x0, y0, x1, y1 = scene.boxes.T
        assert (x0 >= 0).all() and (y0 >= 0).all()
        assert (x1 <= SMALL.width).all() and (y1 <= SMALL.height).all()
        for i, a in enumerate(scene.boxes):
            for b in scene.boxes[i + 1:]:  # at least GAP pixels apart on one axis
                assert a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] \
                    or b[3] + GAP <= a[1]
            patch = scene.image[int(a[1]):int(a[3]), int(a[0]):int(a[2])].astype(float)
            assert patch.std() > 10, "a word's box holds no ink"


def test_a_perfect_detector_scores_100_and_extra_boxes_cost_precision():
    truth = np.array([[0, 0, 10, 10], [20, 20, 40, 30]], dtype=np.float32)
    perfect = craft_text.match(truth.copy(), np.array([0.9, 0.8], dtype=np.float32), truth)
    assert perfect[1].all() and craft_text.average_precision([perfect]) == pytest.approx(100)
    # a box on no word, ranked after both hits, costs no AP but is a false positive
    boxes = np.concatenate([truth, [[50, 50, 60, 60]]]).astype(np.float32)
    scores, hit, words = craft_text.match(boxes, np.array([0.9, 0.8, 0.1], dtype=np.float32),
                                          truth)
    assert sorted(hit.tolist()) == [False, True, True] and words == 2
    assert craft_text.average_precision([(scores, hit, words)]) == pytest.approx(100)
    # ... ranked first, it holds the precision at 1/2 and then 2/3
    scores, hit, words = craft_text.match(boxes, np.array([0.5, 0.8, 0.9], dtype=np.float32),
                                          truth)
    assert hit.tolist() == [False, True, True]  # in score order
    assert craft_text.average_precision([(scores, hit, words)]) == pytest.approx(100 * 2 / 3)
    # two boxes on one word: one finds it, the other is a false positive
    scores, hit, words = craft_text.match(truth[[0, 0]], np.array([0.9, 0.8], dtype=np.float32),
                                          truth)
    assert hit.tolist() == [True, False]


def test_a_box_overlapping_a_word_less_than_half_misses_it():
    truth = np.array([[0, 0, 10, 10]], dtype=np.float32)
    shifted = np.array([[5, 0, 15, 10]], dtype=np.float32)  # IoU 50/150 = 1/3
    assert not craft_text.match(shifted, np.array([1.0], dtype=np.float32), truth)[1].any()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), max_size=30), st.integers(0, 10))
def test_average_precision_is_a_percentage_at_most_the_recall(boxes, missed):
    scores = np.array([s for s, _ in boxes], dtype=np.float32)
    hit = np.array([h for _, h in boxes], dtype=bool)
    words = int(hit.sum()) + missed
    ap = craft_text.average_precision([(scores, hit, words)])
    assert 0.0 <= ap <= 100.0 + 1e-9
    if words:
        assert ap <= 100 * hit.sum() / words + 1e-9


def test_word_boxes_reads_easyocr_maps_at_half_resolution():
    maps = torch.zeros(48, 64, 2)
    maps[10:20, 8:40, 0] = 0.9  # one word's character map, 32 x 10 map pixels
    maps[10:20, 8:40, 1] = 0.9
    boxes, scores = craft_text.word_boxes(maps)
    assert len(boxes) == 1 and scores[0] == pytest.approx(0.9)
    # in image pixels: around map pixels 8..40 x 10..20 doubled, which EasyOCR's dilation
    # widens by a few pixels
    x0, y0, x1, y1 = boxes[0]
    assert 8 <= x0 <= 16 and 12 <= y0 <= 20 and 80 <= x1 <= 88 and 40 <= y1 <= 48
