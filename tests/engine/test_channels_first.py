"""Arrays that may be channels-first RGB: the predictor refuses them, automatic segmentation says how it reads them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.automatic.segment import segment_everything
from napari_sam.engine.datasets.synthetic import synthetic_image
from napari_sam.engine.io.images import channels_first_hint


def test_channels_first_hint_only_for_few_leading_planes():
    assert "stack of 3" in channels_first_hint((3, 64, 80))
    assert channels_first_hint((5, 64, 80)) is None  # a stack
    assert channels_first_hint((64, 80, 3)) is None  # channels last
    assert channels_first_hint((64, 80)) is None


def test_segment_everything_warns_when_a_stack_may_be_a_channels_first_image(trained_model):
    plane = synthetic_image((96, 128), seed=5).image
    stack = np.stack([plane, plane, plane])
    with pytest.warns(UserWarning, match="read as a stack of 3"):
        labels = segment_everything(stack, trained_model, points_per_side=4, pred_iou_thresh=0.5)
    assert labels.shape == (3, 96, 128)  # read as three planes, as the warning says
