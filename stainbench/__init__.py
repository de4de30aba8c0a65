"""stainbench: virtual stain transfer for histopathology, from zarr data to a served,
benchmarked Triton model repository."""

__version__ = "0.1.0"
