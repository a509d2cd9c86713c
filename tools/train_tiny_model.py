"""Train the tiny SAM TEST FIXTURE (tests/data/tiny_sam_synthetic.pt) from scratch on synthetic nuclei.

A thin wrapper over the fine-tuning API (``napari_sam.engine.training.loop``): random
initialisation of the ``tiny_trained_test`` config (seeded), an endless stream of
synthetic "mixed" images (``SyntheticDataset``, seeds from 1_000_000 up; the
quality tests use seeds below 1000), SAM's interactive prompt training, and a
train state every hundred steps so an interrupted run resumes with ``--resume``.
The fixture exists already: retraining it needs ``--overwrite`` (it is replaced only
when the new run is complete).

This model exists so the test suite can check segmentation quality end to end on a
machine that cannot download real SAM weights. It is not a model for users.

    python tools/train_tiny_model.py --output tests/data/tiny_sam_synthetic.pt --overwrite --log train.log

Fixture v2 (``tests/data/tiny_sam_synthetic_v2.pt``, config ``tiny_trained_v2``: a global
last encoder block and an instance decoder trained jointly) uses ``--data mixed+varied``:
every other training image comes from the wide distribution of ``varied_image``, and
``--init`` starts it from the v1 fixture's weights (see tests/data/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

TRAIN_SEED_BASE = 1_000_000  # synthetic training images use seeds >= this; held-out tests use seeds < 1000
VALIDATION_SEED = 500
DATA_KINDS = ("mixed", "mixed+varied")
# How the fixture was trained from scratch: FinetuneOptions defaults suit fine-tuning a pretrained model.
FROM_SCRATCH = {
    "steps": 1200, "correction_iterations": 1, "learning_rate": 1e-3, "warmup_steps": 60, "mask_loss": "bce_dice",
    "focal_weight": 1.0, "checkpoint_every": 100, "device": "cpu",
}


def build_parser() -> argparse.ArgumentParser:
    """The tool's options: FinetuneOptions (with the FROM_SCRATCH defaults) plus model and output settings."""
    from napari_sam.engine.training.options import add_finetune_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("tests/data/tiny_sam_synthetic.pt"))
    parser.add_argument("--log", type=Path, default=None, help="also append progress lines to this file")
    parser.add_argument("--config", default="tiny_trained_test")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a busy shared machine)")
    parser.add_argument("--hypernet-init-scale", type=float, default=1.0,
                        help="multiply the initial output layer of the mask hypernetworks (larger initial mask "
                             "logits shorten the plateau at the start of training from scratch)")
    parser.add_argument("--init", type=Path, help="start from this checkpoint's weights instead of random ones "
                        "(relative-position tables of another length, e.g. a block made global, are resampled; "
                        "parts the file lacks, e.g. a new instance decoder, keep their random initialisation)")
    parser.add_argument("--data", choices=DATA_KINDS, default="mixed",
                        help="training images: 'mixed' (SyntheticDataset style mixed, varied per image: fixture v1) or "
                             "'mixed+varied' (every other image from varied_image's wide distribution: fixture v2)")
    add_finetune_arguments(parser, FROM_SCRATCH)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    import numpy as np
    import torch

    import napari_sam.model.sam.image_encoder as image_encoder
    from napari_sam.engine.training.loop import finetune
    from napari_sam.engine.training.options import options_from_args
    from napari_sam.model import build_sam

    torch.set_num_threads(args.threads)
    # global attention's relative-position bias in one band (a few MB at this size), as fixture v2 was trained;
    # the CPU's banded path trains too now (equal gradients), but the sums' order would differ in the last bits
    image_encoder.CPU_BIAS_CHUNK_BYTES = 1 << 62
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model = build_sam(args.config)
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(args.hypernet_init_scale)
    if args.init:
        model.load_state_dict(_initial_weights(args.init, model.state_dict()))
    images_needed = args.steps * args.images_per_step
    train = training_images(args.data, images_needed, TRAIN_SEED_BASE)
    val = training_images(args.data, 4, VALIDATION_SEED, vary_style=False)
    options = options_from_args(args)

    def report(line: str) -> None:
        print(line, flush=True)
        if args.log:
            with open(args.log, "a") as log:
                log.write(line + "\n")

    report(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} train_tiny_model {' '.join(sys.argv[1:] if argv is None else argv)}")
    for progress in finetune(model, train, val, options, checkpoint_path=args.output, resume=args.resume,
                             overwrite=args.overwrite):
        if progress.loss is None or progress.validation or progress.checkpoint or progress.step % 10 == 0:
            report(progress.describe())
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    args.output.with_suffix(".sha256").write_text(f"{digest}  {args.output.name}\n")
    report(f"# done: {args.output} {args.output.stat().st_size} bytes sha256 {digest}")
    return 0


class _Interleaved(Sequence):
    """Items of several equally long sequences taken in turn: item ``i`` is ``parts[i % k][i // k]``."""

    def __init__(self, parts: list) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return self.parts[index % len(self.parts)][index // len(self.parts)]


def training_images(kind: str, count: int, seed: int, vary_style: bool = True) -> Sequence:
    """The synthetic images of ``kind`` (see ``DATA_KINDS``), ``count`` of them, from ``seed`` up.

    ``mixed``: ``SyntheticDataset(style="mixed", vary_style=...)`` (fixture v1). ``mixed+varied``:
    those at even positions and ``varied_image`` at odd ones; both halves use seeds ``seed, seed + 1, ...``
    of their own generator. The held-out tests of fixture v2 use this function with seeds below 1000.
    """
    from napari_sam.engine.datasets.synthetic import SyntheticDataset

    if kind == "mixed":
        return SyntheticDataset(count, seed=seed, style="mixed", vary_style=vary_style)
    half = (count + 1) // 2
    return _Interleaved([SyntheticDataset(half, seed=seed, style="mixed", vary_style=vary_style),
                         SyntheticDataset(half, seed=seed, varied=True)])


def _initial_weights(path: Path, own: dict) -> dict:
    """The state dict of ``path`` fitted to ``own``'s shapes: relative-position tables are resampled
    linearly along the offset axis (as the encoder does for other input sizes); tensors the file lacks
    (a part the file's model did not have, e.g. an instance decoder) keep ``own``'s values."""
    import torch.nn.functional as F

    from napari_sam.model.checkpoint import read_state_dict

    state = dict(read_state_dict(path))
    for key, value in state.items():
        if key.endswith(("rel_pos_h", "rel_pos_w")) and key in own and own[key].shape != value.shape:
            state[key] = F.interpolate(value.t()[None], size=own[key].shape[0], mode="linear")[0].t().contiguous()
    missing = [key for key in own if key not in state]
    print(f"# --init {path}: {len(missing)} tensors not in the file keep their initialisation "
          f"({', '.join(sorted({key.split('.')[0] for key in missing})) or 'none'})", flush=True)
    state.update({key: own[key] for key in missing})
    return state


if __name__ == "__main__":
    sys.exit(main())
