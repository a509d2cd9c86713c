"""numpy-in/numpy-out prompt helpers (napari_sam.engine.predict.prompts): nD layer data -> prompts of one plane."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine import labels
from napari_sam.engine.predict import prompts


def test_points_on_plane_keeps_only_this_slice_and_inside_points():
    coords = np.array(
        [
            [2.0, 10.0, 12.0],  # on slice 2
            [2.4, 5.0, 6.0],  # rounds to slice 2
            [3.0, 10.0, 12.0],  # another slice
            [2.0, -3.0, 4.0],  # outside the image
            [2.0, 19.6, 4.0],  # outside (rows 0..19)
        ]
    )
    labels = np.array([1, 0, 1, 1, 1])
    points, kept = prompts.points_on_plane(coords, labels, (1, 2), {0: 2}, (20, 30))
    np.testing.assert_array_equal(points, [[10.0, 12.0], [5.0, 6.0]])
    np.testing.assert_array_equal(kept, [1, 0])


def test_points_on_a_transposed_plane_use_sorted_axes():
    coords = np.array([[4.0, 1.0, 7.0]])
    points, _ = prompts.points_on_plane(coords, np.array([1]), (2, 0), {1: 1}, (10, 10))
    np.testing.assert_array_equal(points, [[4.0, 7.0]])  # rows = axis 0, cols = axis 2


def test_no_points():
    points, labels = prompts.points_on_plane(np.zeros((0, 3)), np.zeros(0), (1, 2), {0: 0}, (5, 5))
    assert points.shape == (0, 2) and labels.shape == (0,)


def test_boxes_on_plane_clip_and_skip():
    def rect(z, r0, c0, r1, c1):
        return np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], dtype=float)

    shapes = [
        rect(1, 2, 3, 8, 9),  # plain
        rect(1, -5, 20, 4, 40),  # crosses the border: clipped
        rect(0, 2, 3, 8, 9),  # another slice
        rect(1, 50, 50, 60, 60),  # entirely outside
        rect(1, 8, 9, 2, 3)[::-1],  # drawn from the other corner
    ]
    boxes = prompts.boxes_on_plane(shapes, (1, 2), {0: 1}, (20, 30))
    np.testing.assert_array_equal(boxes, [[2, 3, 8, 9], [0, 20, 4, 29], [2, 3, 8, 9]])


def test_plane_axes_must_differ():
    with pytest.raises(ValueError):
        prompts.plane_axes((1, 1))


def test_candidate_order_best_first():
    np.testing.assert_array_equal(prompts.candidate_order(np.array([0.2, 0.9, 0.5])), [1, 2, 0])


def test_next_free_label():
    assert labels.next_free_label(np.zeros((3, 3), np.uint8)) == 1
    assert labels.next_free_label(np.array([[0, 7], [3, 0]])) == 8


def test_commit_pixels_fills_only_background_by_default():
    existing = np.zeros((4, 4), np.int32)
    existing[0, :] = 5
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    rows, cols, values = labels.commit_pixels(existing, [mask], first_id=6)
    written = existing.copy()
    written[rows, cols] = values
    expected = existing.copy()
    expected[1, :2] = 6
    np.testing.assert_array_equal(written, expected)

    rows, cols, values = labels.commit_pixels(existing, [mask], first_id=6, paint_over=True)
    written = existing.copy()
    written[rows, cols] = values
    assert (written[:2, :2] == 6).all()


def test_commit_pixels_overlapping_objects_first_one_wins():
    existing = np.zeros((3, 3), np.int32)
    a = np.zeros((3, 3), bool)
    a[:, :2] = True
    b = np.zeros((3, 3), bool)
    b[:, 1:] = True
    rows, cols, values = labels.commit_pixels(existing, [a, b], first_id=1)
    written = existing.copy()
    written[rows, cols] = values
    np.testing.assert_array_equal(written, [[1, 1, 2]] * 3)


def test_commit_pixels_shape_mismatch():
    with pytest.raises(ValueError):
        labels.commit_pixels(np.zeros((3, 3)), [np.ones((2, 2), bool)], 1)


def test_object_areas_over_all_planes_and_large_ids():
    stack = np.zeros((3, 4, 5), np.uint32)
    stack[0, :2, :2] = 4  # 4 pixels
    stack[2, 0, :] = 4  # 5 more, another plane
    stack[1, 3, 3] = 2
    ids, areas = labels.object_areas(stack)
    np.testing.assert_array_equal(ids, [2, 4])
    np.testing.assert_array_equal(areas, [1, 9])
    sparse = np.zeros((4, 4), np.uint32)
    sparse[0, 0] = 4_000_000_000  # far beyond the pixel count: counted without a huge bincount
    sparse[1, :] = 7
    ids, areas = labels.object_areas(sparse)
    np.testing.assert_array_equal(ids, [7, 4_000_000_000])
    np.testing.assert_array_equal(areas, [4, 1])
    ids, areas = labels.object_areas(np.zeros((2, 2), np.uint8))
    assert ids.shape == (0,) and areas.shape == (0,)


def test_object_pixels_and_plane():
    stack = np.zeros((4, 6, 6), np.uint16)
    stack[1, 0, 0] = 3
    stack[2, 1:4, 1:4] = 3  # most pixels on plane 2 of axis 0
    stack[0, 5, 5] = 1
    z, r, c = labels.object_pixels(stack, 3)
    assert len(z) == 10 and set(z.tolist()) == {1, 2}
    assert labels.object_plane(stack, 3, (1, 2)) == {0: 2}
    assert labels.object_plane(stack, 3, (0, 2)) == {1: 1}  # rows 1..3 tie on 3 pixels each: the first
    assert labels.object_plane(stack, 9, (1, 2)) is None
    assert labels.object_plane(stack[2], 3, (0, 1)) == {}


def test_resegment_pixels_replace_the_object_and_keep_others():
    plane = np.zeros((5, 5), np.int32)
    plane[0:2, 0:2] = 3  # the object being redone
    plane[4, :] = 8  # a neighbour
    mask = np.zeros((5, 5), bool)
    mask[1:5, 1:3] = True  # overlaps its old pixel (1, 1) and the neighbour's row
    rows, cols, values = labels.resegment_pixels(plane, mask, 3)
    written = plane.copy()
    written[rows, cols] = values
    expected = plane.copy()
    expected[0:2, 0:2] = 0
    expected[1:4, 1:3] = 3
    np.testing.assert_array_equal(written, expected)
    assert not ((plane == written)[rows, cols]).any()  # only changed pixels are listed

    rows, cols, values = labels.resegment_pixels(plane, mask, 3, paint_over=True)
    written = plane.copy()
    written[rows, cols] = values
    assert (written[1:5, 1:3] == 3).all() and (written[4, 3:] == 8).all() and written[0, 0] == 0
    with pytest.raises(ValueError):
        labels.resegment_pixels(plane, np.ones((2, 2), bool), 3)
