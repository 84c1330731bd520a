"""segqual-jax: predict a lesion segmentation's quality without manual delineation.

Layers, each importing only from those before it (``tests/test_layers.py``):
``core`` (files, devices, keys, errors, run layout) -> ``config``, ``data``,
``metrics`` -> ``segmenter`` (f: U-Net, uncertainty methods, sampling engine,
running f over cases) -> ``quality`` (g, cheap QC, RCA, auto-accept, loading
any of them) -> ``training`` (both stages) -> ``evaluation`` -> ``apps``
(predict, bench) -> ``main.py``. Importing this package loads nothing.
"""
