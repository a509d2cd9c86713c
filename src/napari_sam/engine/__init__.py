"""numpy/torch algorithms (no napari, no Qt), the public face of the engine.

Subpackages, named for what a user looks for:

- ``predict``: the ``Predictor`` (prompted masks on one image), its protocol, the
  embedding cache, image preprocessing, device and precision.
- ``automatic``: segment everything: parameters, mask generation, tiling, stitching,
  local and Dask runners, ``segment_everything``.
- ``training``: fine-tuning (options, losses, prompt sampling, data, loop, evaluation).
- ``io``: opening images of every backing, creating label outputs.
- ``datasets``: synthetic images for tests, benchmarks and the test fixture.
- ``metrics``, ``labels``, ``errors``: shared by all of the above.

Names are imported lazily so ``import napari_sam.engine`` does not import torch.
"""

from __future__ import annotations

import importlib

from napari_sam.engine.errors import InputError

_LAZY = {
    "Predictor": "napari_sam.engine.predict.predictor",
    "ImageEmbedding": "napari_sam.engine.predict.predictor",
    "PredictorProtocol": "napari_sam.engine.predict.protocol",
    "EmbeddingCache": "napari_sam.engine.predict.embedding_cache",
    "select_device": "napari_sam.engine.predict.device",
    "segment_everything": "napari_sam.engine.automatic.segment",
    "segment_everything_steps": "napari_sam.engine.automatic.segment",
    "AutomaticParams": "napari_sam.engine.automatic.params",
    "generate_labels": "napari_sam.engine.automatic.generation",
    "InstanceParams": "napari_sam.engine.automatic.instance",
    "segment_instances": "napari_sam.engine.automatic.instance",
    "FinetuneOptions": "napari_sam.engine.training.options",
    "finetune": "napari_sam.engine.training.loop",
    "f1_score": "napari_sam.engine.metrics",
    "mask_iou": "napari_sam.engine.metrics",
    "synthetic_image": "napari_sam.engine.datasets.synthetic",
    "annotate_dataset": "napari_sam.engine.datasets.auto_annotate",
    "annotate_image": "napari_sam.engine.datasets.auto_annotate",
    "propagate_object": "napari_sam.engine.volume.propagate",
    "iter_propagation": "napari_sam.engine.volume.propagate",
    "PlaneResult": "napari_sam.engine.volume.propagate",
    "PropagationResult": "napari_sam.engine.volume.propagate",
    "propagate_objects": "napari_sam.engine.volume.sam2_memory",
    "iter_objects_propagation": "napari_sam.engine.volume.sam2_memory",
    "PropagationOptions": "napari_sam.engine.volume.recipe",
    "StackEmbeddings": "napari_sam.engine.volume.stack_embeddings",
    "segment_volume": "napari_sam.engine.volume.segment",
    "segment_volume_steps": "napari_sam.engine.volume.segment",
}

__all__ = ["InputError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
