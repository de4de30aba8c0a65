"""Classical stain normalization baselines, served beside the learned models.

- :mod:`stainbench.baselines.lab`: sRGB <-> CIELAB in numpy;
- :mod:`stainbench.baselines.reinhard`: Reinhard LAB mean/std transfer (numpy reference and
  an exportable torch module);
- :mod:`stainbench.baselines.macenko`: Macenko SVD stain normalization (numpy only);
- :mod:`stainbench.baselines.export`: fit on target-domain tiles and write ``reinhard`` and
  ``macenko`` into a Triton repository.
"""
