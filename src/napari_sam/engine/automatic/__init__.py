"""Segment everything: parameters, mask generation, tiling, stitching, runners."""
