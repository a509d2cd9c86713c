"""Prompted segmentation of one image: predictor, embedding cache, preprocessing, device."""
