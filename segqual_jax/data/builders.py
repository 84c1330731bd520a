"""TFDS builder for the embedded synthetic lesion data set (TF-free).

The builder writes array_record files and is read back with
``builder.as_data_source()``, so neither preparing nor reading the data imports
TensorFlow. The builder config is derived from ``config.data`` (size, seed and
split sizes are part of its name), so two runs that ask for the same data share
one prepared copy and a run that asks for different data never reads a stale one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from segqual_jax.core import errors
from segqual_jax.data import images, synthetic, volumes

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


# ---------------------------------------------------------------------------
# Real data: any folder of images and masks, and the official ISIC 2017 layout.


DataError = errors.DataError  # raised for bad real data; lives in core so main catches every error kind alike


def _ids_text(ids) -> str:
  ids = sorted(ids)
  shown = ', '.join(ids[:10])
  return f'{shown} (+{len(ids) - 10} more)' if len(ids) > 10 else shown


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  """Where the pairs are and how they are split.

  ``pairs`` is ``((id, image_path, mask_path), ...)`` and ``splits`` is
  ``((split, (id, ...)), ...)``, both fixed when the builder is made, so the
  prepared copy is exactly what the config asked for.
  """
  image_size: int = 128
  # repr=False: TFDS logs the config, and thousands of paths are noise there
  pairs: tuple = dataclasses.field(default=(), repr=False)
  splits: tuple = dataclasses.field(default=(), repr=False)


class FolderSegmentation(tfds.core.GeneratorBasedBuilder):
  """Image/mask pairs from disk, resized to one square size."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIG_CLASS = FolderConfig

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description='Image/mask pairs read from a folder (segqual_jax.data.builders).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
            'mask': tfds.features.Tensor(shape=(size, size), dtype=np.uint8),
            'id': tfds.features.Text(),
            'index': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('image', 'mask'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    # TFDS cannot write an empty split; a run that needs one gets a clear error from load_splits
    return {split: self._generate_examples(ids) for split, ids in self.builder_config.splits if ids}

  def _generate_examples(self, ids):
    paths = {pair[0]: pair[1:] for pair in self.builder_config.pairs}
    size = self.builder_config.image_size
    for index, example_id in enumerate(ids):
      image_path, mask_path = paths[example_id]
      yield example_id, {'image': images.read_image(image_path, size),
                         'mask': images.read_mask(mask_path, size),
                         'id': example_id, 'index': index}


def _stem_map(directory: str, strip_suffix: str = '') -> dict[str, str]:
  """``{id: path}`` of the image files in ``directory``; two files for one id is an error."""
  if not os.path.isdir(directory):
    raise DataError(f'{directory}: no such directory')
  found: dict[str, list[str]] = {}
  for name in images.list_images(directory):
    stem = os.path.splitext(name)[0]
    if strip_suffix and stem.endswith(strip_suffix):
      stem = stem[:-len(strip_suffix)]
    found.setdefault(stem, []).append(os.path.join(directory, name))
  clashes = [k for k, v in found.items() if len(v) > 1]
  if clashes:
    raise DataError(f'{directory}: several files for one id: {_ids_text(clashes)}')
  return {k: v[0] for k, v in found.items()}


def match_pairs(image_dir: str, mask_dir: str, mask_suffix: str = '') -> dict[str, tuple[str, str]]:
  """``{id: (image_path, mask_path)}``; an image without a mask (or the reverse) is an error."""
  image_paths = _stem_map(image_dir)
  mask_paths = _stem_map(mask_dir, mask_suffix)
  problems = []
  if (no_mask := set(image_paths) - set(mask_paths)):
    problems.append(f'{len(no_mask)} image(s) in {image_dir} without a mask in {mask_dir}: '
                    f'{_ids_text(no_mask)}')
  if (no_image := set(mask_paths) - set(image_paths)):
    problems.append(f'{len(no_image)} mask(s) in {mask_dir} without an image in {image_dir}: '
                    f'{_ids_text(no_image)}')
  if problems:
    raise DataError('; '.join(problems))
  return {k: (image_paths[k], mask_paths[k]) for k in sorted(image_paths)}


def check_pairs(pairs: dict[str, tuple[str, str]]) -> None:
  """Every image and mask opens, and each mask has its image's size (headers only)."""
  unreadable, mismatched = [], []
  for example_id, (image_path, mask_path) in pairs.items():
    try:
      image_wh, mask_wh = images.image_size(image_path), images.image_size(mask_path)
    except images.ImageError as e:
      unreadable.append(f'{example_id} ({e})')
      continue
    if image_wh != mask_wh:
      mismatched.append(f'{example_id} (image {image_wh[0]}x{image_wh[1]}, '
                        f'mask {mask_wh[0]}x{mask_wh[1]})')
  problems = []
  if unreadable:
    problems.append(f'{len(unreadable)} unreadable file(s): {_ids_text(unreadable)}')
  if mismatched:
    problems.append(f'{len(mismatched)} mask(s) of another size than their image: '
                    f'{_ids_text(mismatched)}')
  if problems:
    raise DataError('; '.join(problems))


def read_id_list(path: str) -> list[str]:
  """Ids of a split list: one a line; blank lines and ``#`` comments ignored."""
  try:
    with open(path) as f:
      lines = [line.split('#')[0].strip() for line in f]
  except OSError as e:
    raise DataError(f'{path}: cannot read split list ({e.strerror})') from e
  ids = [line for line in lines if line]
  if len(set(ids)) != len(ids):
    raise DataError(f'{path}: ids listed twice: {_ids_text({i for i in ids if ids.count(i) > 1})}')
  return ids


def parse_split_spec(spec: str) -> list[tuple[str, str]]:
  """``'train=a.txt,test=b.txt'`` -> ``[('train', 'a.txt'), ('test', 'b.txt')]``."""
  out = []
  for item in spec.split(','):
    if not item.strip():
      continue
    split, _, path = item.partition('=')
    out.append((split.strip(), path.strip()))
  return out


def resolve_splits(root: str, spec: str, pairs: dict, seed: int,
                   fractions=(0.6, 0.1, 0.15, 0.15)) -> dict[str, list[str]]:
  """Ids of each split: from the lists of ``spec`` (paths relative to ``root``),
  or, with no lists, a seeded permutation cut by ``fractions`` (train, validation,
  quality, test; each split but train gets at least one pair). A list naming
  an id that has no pair is an error naming the list and the ids."""
  if not spec.strip():
    ids = sorted(pairs)
    if len(ids) < len(SPLITS):
      raise DataError(f'{root}: {len(ids)} pairs cannot be split four ways; give split lists')
    order = np.random.default_rng(seed).permutation(len(ids))
    rest = [max(1, int(round(f * len(ids)))) for f in fractions[1:]]
    cuts = np.cumsum([len(ids) - sum(rest)] + rest[:-1])
    parts = np.split(order, cuts)
    return {split: [ids[i] for i in sorted(part)] for split, part in zip(SPLITS, parts)}
  out = {}
  for split, rel_path in parse_split_spec(spec):
    path = os.path.normpath(os.path.join(root, rel_path))
    ids = read_id_list(path)
    if (missing := [i for i in ids if i not in pairs]):
      raise DataError(f'{path} (split {split}) names {len(missing)} id(s) with no image/mask '
                      f'pair: {_ids_text(missing)}')
    out[split] = ids
  return out


# The official ISIC 2017 Task 1 layout: folder -> (our split, image dir, mask dir).
ISIC2017_LAYOUT = (
    ('train', 'ISIC-2017_Training_Data', 'ISIC-2017_Training_Part1_GroundTruth'),
    ('validation', 'ISIC-2017_Validation_Data', 'ISIC-2017_Validation_Part1_GroundTruth'),
    ('test', 'ISIC-2017_Test_v2_Data', 'ISIC-2017_Test_v2_Part1_GroundTruth'),
)
_ISIC_IMAGE = re.compile(r'^ISIC_\d+\.jpg$', re.IGNORECASE)


def isic2017_pairs(manual_dir: str) -> tuple[dict[str, tuple[str, str]], dict[str, list[str]]]:
  """Pairs and official splits of an ISIC 2017 Task 1 download in ``manual_dir``.

  Images are ``ISIC_<n>.jpg`` (the ``_superpixels.png`` files beside them are
  ignored), masks ``ISIC_<n>_segmentation.png``. A missing split folder pair
  (e.g. no test ground truth) leaves that split empty; a half-present one is
  an error.
  """
  pairs, splits = {}, {}
  for split, image_folder, mask_folder in ISIC2017_LAYOUT:
    image_dir, mask_dir = os.path.join(manual_dir, image_folder), os.path.join(manual_dir, mask_folder)
    if not os.path.isdir(image_dir) and not os.path.isdir(mask_dir):
      splits[split] = []
      continue
    for folder in (image_dir, mask_dir):
      if not os.path.isdir(folder):
        raise DataError(f'{folder}: missing (its {split} counterpart exists)')
    image_paths = {os.path.splitext(f)[0]: os.path.join(image_dir, f)
                   for f in os.listdir(image_dir) if _ISIC_IMAGE.match(f)}
    mask_paths = _stem_map(mask_dir, '_segmentation')
    no_mask, no_image = set(image_paths) - set(mask_paths), set(mask_paths) - set(image_paths)
    if no_mask or no_image:
      raise DataError(f'ISIC 2017 {split}: {len(no_mask)} image(s) without a mask '
                      f'({_ids_text(no_mask)}), {len(no_image)} mask(s) without an image '
                      f'({_ids_text(no_image)})')
    splits[split] = sorted(image_paths)
    pairs.update({k: (image_paths[k], mask_paths[k]) for k in splits[split]})
  if not pairs:
    raise DataError(f'{manual_dir}: no ISIC 2017 folders (expected e.g. {ISIC2017_LAYOUT[0][1]}/)')
  return pairs, splits


def _fingerprint(pairs: dict, splits: dict, image_size: int) -> str:
  """Changes whenever a file, a split or the size changes: the prepared copy's name."""
  h = hashlib.sha1(str(image_size).encode())
  for example_id in sorted(pairs):
    for path in pairs[example_id]:
      st = os.stat(path)
      h.update(f'{example_id}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}'.encode())
  for split in sorted(splits):
    h.update(f'{split}:{",".join(splits[split])}'.encode())
  return h.hexdigest()[:16]


def real_builder(data_config) -> FolderSegmentation:
  """The builder for ``config.data`` with ``name`` folder or isic2017 (not yet prepared).

  Raises ``DataError`` naming the offending ids before anything is written.
  """
  root = os.path.expanduser(data_config.root)
  if not root:
    raise DataError(f'config.data.name={data_config.name} needs config.data.root')
  if data_config.name == 'folder':
    pairs = match_pairs(os.path.join(root, 'images'), os.path.join(root, 'masks'))
    splits = resolve_splits(root, data_config.splits, pairs, data_config.seed)
  else:
    pairs, splits = isic2017_pairs(root)
    if data_config.splits.strip():
      splits = resolve_splits(root, data_config.splits, pairs, data_config.seed)
  used = {i for ids in splits.values() for i in ids}
  pairs = {k: v for k, v in pairs.items() if k in used}
  check_pairs(pairs)
  name = f'{data_config.name}_{data_config.image_size}px_{_fingerprint(pairs, splits, data_config.image_size)}'
  config = FolderConfig(name=name, image_size=data_config.image_size,
                        pairs=tuple((k, *v) for k, v in sorted(pairs.items())),
                        splits=tuple((s, tuple(ids)) for s, ids in splits.items()))
  return FolderSegmentation(config=config, data_dir=data_config.data_dir or None,
                            file_format='array_record')


# ---------------------------------------------------------------------------
# nnU-Net v2 raw data sets: 3D volumes, judged per case, learned from as axial slices.


@dataclasses.dataclass
class VolumeConfig(tfds.core.BuilderConfig):
  """An nnU-Net raw data set's cases and their split (by case: a patient's slices stay together)."""
  image_size: int = 64
  root: str = ''
  splits: tuple = dataclasses.field(default=(), repr=False)  # ((split, (case, ...)), ...)


class VolumeSlices(tfds.core.GeneratorBasedBuilder):
  """Every axial slice of every volume, at one square size (``data/volumes.py``)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIG_CLASS = VolumeConfig
  _info = FolderSegmentation._info  # the same features: image, mask, id (<case>:zNNN), index

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(cases) for split, cases in self.builder_config.splits if cases}

  def _generate_examples(self, cases):
    root, size = self.builder_config.root, self.builder_config.image_size
    spec = volumes.read_dataset_json(root)
    index = 0
    for case in cases:
      volume = volumes.read_case(os.path.join(root, 'imagesTr'), case, spec, os.path.join(root, 'labelsTr'))
      images_z, masks_z = volumes.slices(volume, size)
      for k in range(len(images_z)):
        sid = volumes.slice_id(case, k)
        yield sid, {'image': images_z[k], 'mask': masks_z[k], 'id': sid, 'index': index}
        index += 1


def check_volumes(root: str, cases) -> None:
  """Every case of the data set reads as one checked volume; else a ``DataError`` naming each
  bad case and its problem (a model is not trained on a data set with broken volumes)."""
  spec = volumes.read_dataset_json(root)
  bad = []
  for case in cases:
    try:
      volumes.read_case(os.path.join(root, 'imagesTr'), case, spec, os.path.join(root, 'labelsTr'))
    except volumes.VolumeError as e:
      bad.append(str(e))
  if bad:
    raise DataError(f'{root}: {len(bad)} bad volume(s): ' + '; '.join(bad))


def nnunet_builder(data_config) -> VolumeSlices:
  """The builder of an nnU-Net raw data set (``config.data.root`` = ``DatasetXXX_Name``)."""
  root = os.path.abspath(os.path.expanduser(data_config.root))
  spec = volumes.read_dataset_json(root)
  cases = volumes.list_cases(os.path.join(root, 'imagesTr'), spec.file_ending)
  files = {c: tuple([volumes.channel_file(os.path.join(root, 'imagesTr'), c, i, spec.file_ending)
                     for i in range(len(spec.channels))] + [os.path.join(root, 'labelsTr', c + spec.file_ending)])
           for c in cases}
  splits = resolve_splits(root, data_config.splits, files, data_config.seed)
  used = sorted({c for ids in splits.values() for c in ids})
  present = {c: tuple(p for p in files[c] if os.path.exists(p)) for c in used}
  name = f'nnunet_{data_config.image_size}px_{_fingerprint(present, splits, data_config.image_size)}'
  check_volumes(root, used)
  return VolumeSlices(config=VolumeConfig(name=name, image_size=data_config.image_size, root=root,
                                          splits=tuple((s, tuple(ids)) for s, ids in splits.items())),
                      data_dir=data_config.data_dir or None, file_format='array_record')
