"""Fine-tuning SAM on images with instance labels."""
