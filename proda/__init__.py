"""proda: ProDA (CVPR 2021) domain-adaptive semantic segmentation as a reproducible pipeline."""
__version__ = "0.1.0"
