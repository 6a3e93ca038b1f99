"""segsplat_ns: make any Gaussian splat segmentable inside nerfstudio."""

__version__ = "0.1.0"
