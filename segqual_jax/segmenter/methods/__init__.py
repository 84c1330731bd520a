"""Uncertainty methods for the segmentation network f, by config name.

Each module implements ``base.Method`` (the three sampling hooks
``sample_features`` / ``sample`` / ``sample_inputs``, with ``naive_sample`` as
the reference the engine must equal). ``config.schema.METHODS`` lists the
same names for validation, which must not import JAX; a test keeps the two equal.
"""

from segqual_jax.segmenter.methods import ensemble, hcnn, hierarchical, lce, mc_dropout, msp, tta
from segqual_jax.segmenter.methods.base import Method

METHODS = {cls.name: cls for cls in (msp.MaxSoftmax, mc_dropout.MCDropout,
                                     hcnn.Heteroscedastic, lce.LearnedConfidence,
                                     ensemble.DeepEnsemble, tta.TTA, hierarchical.Hierarchical)}


def create_method(config) -> Method:
  """The method named by ``config.method``, with its U-Net."""
  return METHODS[config.method](config)


def training_family(name: str) -> str:
  """Methods of one family train identical networks (same config and seed -> same f)."""
  return METHODS[name].trains_like or name
