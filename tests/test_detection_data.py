"""The synthetic detection data: every box lies on its item, inside the canvas, barely
overlapping the others, and a seed gives the same canvases everywhere."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.workloads.fmnist_det_data import (
    MAX_OVERLAP,
    VISIBLE,
    DetectionRecipe,
    _iou,
    compose,
)

FAST = settings(max_examples=25, deadline=None, database=None)


def items(seed: int, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Bright random blobs in 28 x 28 frames with a dark margin, like Fashion-MNIST items."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for image in images:
        top, left = rng.integers(0, 10, 2)
        height, width = rng.integers(8, 18, 2)
        image[top:top + height, left:left + width] = rng.integers(100, 256, (height, width))
    return images, rng.integers(0, 10, n)


@FAST
@given(seed=st.integers(0, 2**31 - 1), canvas=st.sampled_from([96, 160]))
def test_boxes_are_tight_inside_and_apart(seed, canvas):
    images, labels = items(seed)
    recipe = DetectionRecipe(canvas=canvas, noise=VISIBLE)  # background never counts as item
    image, boxes = compose(images, labels, np.random.default_rng(seed), recipe)
    assert image.shape == (canvas, canvas) and image.dtype == np.uint8
    assert 1 <= len(boxes) <= recipe.max_objects
    pixels = []
    for cls, cx, cy, w, h in boxes:
        assert cls in set(labels.tolist())
        x0, y0 = round((cx - w / 2) * canvas), round((cy - h / 2) * canvas)
        x1, y1 = round((cx + w / 2) * canvas), round((cy + h / 2) * canvas)
        assert 0 <= x0 < x1 <= canvas and 0 <= y0 < y1 <= canvas
        inside = image[y0:y1, x0:x1] > VISIBLE
        # Tight: the item reaches every edge of its box.
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        pixels.append((x0, y0, x1, y1))
    for i, a in enumerate(pixels):
        for b in pixels[i + 1:]:
            assert _iou(a, b) <= MAX_OVERLAP + 1e-9


def test_a_seed_gives_the_same_canvases():
    images, labels = items(0)
    recipe = DetectionRecipe()
    first = compose(images, labels, np.random.default_rng(5), recipe)
    again = compose(images, labels, np.random.default_rng(5), recipe)
    other = compose(images, labels, np.random.default_rng(6), recipe)
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    assert not np.array_equal(first[0], other[0])
