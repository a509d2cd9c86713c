"""Fine-tuning SAM on images with instance labels.

One job per module: ``options`` (settings, their checks and help, progress reports,
the command-line options built from them), ``data`` (image/label pairs), ``prompt_sampling``
(boxes, points, corrections from object masks), ``losses``, ``step`` (one step's
loss), ``evaluation`` (prompted IoU through the Predictor), ``state`` (the run's
files: resumable train state, final weights) and ``loop`` (``finetune``; it also
re-exports the public names of the others).
"""
