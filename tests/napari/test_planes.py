"""The plane on screen and one-plane layers over it (napari ViewerModel, no Qt).

Both widgets choose their plane with :mod:`napari_sam._napari.planes`; these tests
pin the geometry: which plane ``dims.order`` shows, cutting a box out of it without
reading the rest, and placing a one-plane layer on it under any layer transform.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Image, Labels

from napari_sam._napari import planes as plane_ops
from napari_sam._napari.planes import Plane
from napari_sam.engine.errors import InputError


@pytest.mark.parametrize(
    ("order", "axes"), [((0, 1, 2), (1, 2)), ((1, 0, 2), (0, 2)), ((1, 2, 0), (0, 2)), ((2, 0, 1), (0, 1))]
)
def test_current_plane_follows_dims_order(order, axes):
    viewer = ViewerModel()
    image = viewer.add_image(np.zeros((10, 12, 14)), scale=(1.0, 2.0, 3.0), translate=(0.0, 1.0, 0.0))
    viewer.dims.order = order
    slider = order[0]
    viewer.dims.set_point(slider, image.data_to_world([4, 4, 4])[slider])
    plane = plane_ops.current_plane(viewer, image)
    assert plane.axes == axes  # rows: the smaller axis number
    assert plane.index_map == {slider: 4}


def test_plane_region_cuts_the_box_without_reading_the_rest():
    import dask.array as da

    data = np.arange(6 * 5 * 7).reshape(6, 5, 7)
    lazy = da.from_array(data, chunks=1)
    image = Image(lazy)
    plane = Plane((0, 2), ((1, 3),))
    region = plane_ops.plane_region(image, plane, (1, 4, 2, 6))
    assert isinstance(region, da.Array)  # still lazy: only this box will be read
    np.testing.assert_array_equal(region.compute(), data[1:4, 3, 2:6])
    np.testing.assert_array_equal(plane_ops.read_plane(image, plane), data[:, 3, :])


def test_plane_region_of_rgb_keeps_the_channels():
    data = np.random.default_rng(0).integers(0, 255, (3, 8, 9, 3), dtype=np.uint8)
    image = Image(data, rgb=True)
    region = plane_ops.plane_region(image, Plane((1, 2), ((0, 2),)), (2, 5, 1, 9))
    np.testing.assert_array_equal(region, data[2, 2:5, 1:9])


def test_one_plane_layer_sits_on_its_plane_under_any_transform():
    rotate = ((1, 0, 0), (0, 0.8, -0.6), (0, 0.6, 0.8))
    image = Image(np.zeros((5, 6, 7)), scale=(2, 3, 0.5), translate=(1, -2, 4), rotate=rotate, shear=(0.1, 0.2, 0.3))
    plane, corner = Plane((0, 2), ((1, 4),)), (2, 3)
    shape = plane_ops.one_plane_shape(image, plane, (2, 3))
    assert shape == (2, 1, 3)
    labels = Labels(np.zeros(shape, np.int32), **plane_ops.one_plane_transform(image, plane, corner))
    for row, col in [(0, 0), (1, 2)]:
        np.testing.assert_allclose(
            labels.data_to_world((row, 0, col)), image.data_to_world((row + corner[0], 4, col + corner[1]))
        )


def test_clip_box_keeps_the_part_inside_and_refuses_a_box_outside():
    assert plane_ops.clip_box((-3, 5, 2, 99), (10, 20)) == (0, 5, 2, 20)
    with pytest.raises(InputError, match="does not overlap"):
        plane_ops.clip_box((12, 15, 0, 5), (10, 20))


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing:UserWarning")  # napari's, about drawing such a stack
def test_the_annotator_preview_sits_on_the_slice_of_a_tilted_stack():
    """The preview layer covers the slice shown, also when the stack is rotated across its slices."""
    from napari_sam._napari.controller import AnnotatorController

    viewer = ViewerModel()
    tilt = ((0.8, -0.6, 0.0), (0.6, 0.8, 0.0), (0.0, 0.0, 1.0))  # mixes the slice axis with the rows
    image = viewer.add_image(np.zeros((5, 20, 30)), scale=(2.0, 1.0, 1.0), translate=(1.0, 2.0, 3.0), rotate=tilt)
    viewer.dims.point = tuple(image.data_to_world((3, 10, 15)))
    controller = AnnotatorController(viewer)
    controller.set_image_layer(image)
    assert controller.current_plane().index_map == {0: 3}
    preview = controller.preview_layer
    for row, col in [(0, 0), (7, 11)]:
        np.testing.assert_allclose(preview.data_to_world((0, row, col)), image.data_to_world((3, row, col)))
    controller.close()
