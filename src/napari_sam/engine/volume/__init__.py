"""Volumes and time series: propagate an object through planes, segment a whole stack, embed stacks once.

- ``volumes``: reading a (Z, Y, X[, C]) volume one plane at a time along an axis, one
  intensity range for all planes, the input checks.
- ``recipe``: how a plane is prompted from the previous one and when propagation stops.
- ``propagate``: ``propagate_object`` / ``iter_propagation`` and their results.
- ``stack_embeddings``: per-plane embeddings computed once, cached in memory and on disk
  (zarr), encoded in a cancellable background generator and resumable.
- ``linking`` and ``segment``: automatic 3D segmentation (``segment_volume``), per-plane
  automatic masks linked across planes into 3D objects (or tracks over time).
"""
