"""Annotation datasets out and in: COCO instance JSON, YOLO-seg, label images, OME-Zarr labels.

One module per format (``coco``, ``yolo``, ``label_images``, ``ome_zarr``), each with a
writer and a reader, and ``polygons`` (masks <-> polygons) shared by the polygon formats.
Every module takes and gives the same thing: an instance label image ``(H, W)`` (int, 0 the
background, one id per object) and a class per object, ``{label id: class name}``
(:mod:`napari_sam.engine.export.instances`).

Frames: arrays are (row, col). Polygon and box coordinates in the files are the formats'
(x, y) = (column, row) in a continuous frame where pixel (row, col) covers
``[col, col + 1) x [row, row + 1)`` (pixel centres at ``+0.5``), COCO's and pycocotools'
convention; YOLO uses the same frame divided by the width and height.
"""
