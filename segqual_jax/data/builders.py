"""TFDS builder for the embedded synthetic lesion data set (TF-free).

The builder writes array_record files and is read back with
``builder.as_data_source()``, so neither preparing nor reading the data imports
TensorFlow. The builder config is derived from ``config.data`` (size, seed and
split sizes are part of its name), so two runs that ask for the same data share
one prepared copy and a run that asks for different data never reads a stale one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from segqual_jax.data import synthetic

SPLITS = ('train', 'validation', 'quality', 'test')


@dataclasses.dataclass
class SyntheticLesionsConfig(tfds.core.BuilderConfig):
  """Size, seed and split sizes of one synthetic data set."""
  image_size: int = 64
  seed: int = 0
  num_examples: tuple = (1000, 200, 500, 500)  # train, validation, quality, test


class SyntheticLesions(tfds.core.GeneratorBasedBuilder):
  """Dermoscopy-like images with binary lesion masks, made procedurally."""

  # Prepared copies are cached by name and version: any change to what
  # synthetic.generate_example returns must bump VERSION, or old caches are read.
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIG_CLASS = SyntheticLesionsConfig

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=synthetic.__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
            'mask': tfds.features.Tensor(shape=(size, size), dtype=np.uint8),
            'id': tfds.features.Scalar(dtype=np.int64),
            'lazy': tfds.features.Scalar(dtype=np.int64),
            'low_contrast': tfds.features.Scalar(dtype=np.int64),
            'small': tfds.features.Scalar(dtype=np.int64),
            'n_parts': tfds.features.Scalar(dtype=np.int64),
            'hair': tfds.features.Scalar(dtype=np.int64),
            'rim': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('image', 'mask'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data is generated.
    counts = dict(zip(SPLITS, self.builder_config.num_examples))
    return {split: self._generate_examples(split, n) for split, n in counts.items()}

  def _generate_examples(self, split: str, num: int):
    cfg = synthetic.GeneratorConfig(image_size=self.builder_config.image_size)
    for index in range(num):
      example = synthetic.generate_example(self.builder_config.seed, split, index, cfg)
      yield index, dict(example, id=index)


def synthetic_builder(data_config) -> SyntheticLesions:
  """The builder for ``config.data`` (not yet prepared)."""
  counts = (data_config.num_train, data_config.num_validation,
            data_config.num_quality, data_config.num_test)
  name = f's{data_config.image_size}_seed{data_config.seed}_n' + '-'.join(map(str, counts))
  builder_config = SyntheticLesionsConfig(
      name=name, image_size=data_config.image_size, seed=data_config.seed,
      num_examples=counts)
  return SyntheticLesions(config=builder_config, data_dir=data_config.data_dir or None,
                          file_format='array_record')
