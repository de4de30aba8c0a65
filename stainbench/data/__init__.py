"""Data stage: images and volumes into chunked zarr stores, normalization statistics,
patch datasets, and the built-in demo data set (see docs/DATA.md).

Submodules are imported explicitly (``from stainbench.data.store import open_store``), so that
importing this package loads neither zarr nor torch.
"""
