"""Real data: image reading, the folder and ISIC 2017 builders, and their errors."""

import os

import numpy as np
import pytest
from PIL import Image

from segqual_jax.data import builders, images, loading

SHARED_ISIC = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared', 'data', 'isic2017')


def _rgb(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _disc(h, w, value=255):
  yy, xx = np.mgrid[:h, :w]
  return (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(h, w) / 3) ** 2).astype(np.uint8) * value


def _folder(root, pairs):
  """pairs: {stem: (image PIL, image ext, mask PIL)}"""
  os.makedirs(os.path.join(root, 'images'), exist_ok=True)
  os.makedirs(os.path.join(root, 'masks'), exist_ok=True)
  for stem, (image, ext, mask) in pairs.items():
    if image is not None:
      image.save(os.path.join(root, 'images', stem + ext))
    if mask is not None:
      mask.save(os.path.join(root, 'masks', stem + '.png'))


def _odd_but_valid_pairs():
  return {
      'rgb_png': (Image.fromarray(_rgb(40, 50)), '.png', Image.fromarray(_disc(40, 50))),
      'jpg': (Image.fromarray(_rgb(60, 60, 1)), '.jpg', Image.fromarray(_disc(60, 60, 1))),  # 0/1 mask
      'bmp': (Image.fromarray(_rgb(30, 30, 2)), '.bmp', Image.fromarray(_disc(30, 30, 7))),  # any > 0
      'tiff': (Image.fromarray(_rgb(32, 32, 3)), '.tiff', Image.fromarray(_disc(32, 32))),
      'gray': (Image.fromarray(_rgb(32, 32, 4)[..., 0]), '.png', Image.fromarray(_disc(32, 32))),
      'rgba': (Image.fromarray(np.dstack([_rgb(32, 32, 5), np.full((32, 32), 9, np.uint8)])), '.png',
               Image.fromarray(_disc(32, 32))),
  }


def test_read_image_and_mask_conversions(tmp_path):
  _folder(str(tmp_path), _odd_but_valid_pairs())
  for name in os.listdir(tmp_path / 'images'):
    a = images.read_image(str(tmp_path / 'images' / name), 16)
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8
  for name in os.listdir(tmp_path / 'masks'):
    m = images.read_mask(str(tmp_path / 'masks' / name), 16)
    assert m.shape == (16, 16) and set(np.unique(m)) == {0, 1}
  # grayscale becomes gray RGB; RGBA drops alpha, keeps colour
  gray = images.read_image(str(tmp_path / 'images' / 'gray.png'), 32)
  assert np.array_equal(gray[..., 0], gray[..., 1])
  rgba = images.read_image(str(tmp_path / 'images' / 'rgba.png'), 32)
  assert np.array_equal(rgba, _rgb(32, 32, 5))
  # 16-bit is scaled, not clipped
  Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(tmp_path / 'x16.png')
  assert images.read_image(str(tmp_path / 'x16.png'), 8).min() == 255


@pytest.mark.parametrize('content,reason', [
    (b'', 'empty file'),
    (b'this is not an image at all', 'not an image'),
])
def test_read_image_errors_name_file_and_problem(tmp_path, content, reason):
  path = tmp_path / 'bad.png'
  path.write_bytes(content)
  with pytest.raises(images.ImageError, match=reason) as e:
    images.read_image(str(path), 16)
  assert str(path) in str(e.value)


def test_truncated_tiny_and_huge_images(tmp_path):
  good = tmp_path / 'good.png'
  Image.fromarray(_rgb(64, 64)).save(good)
  data = good.read_bytes()
  (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
  Image.fromarray(_rgb(64, 64)).save(tmp_path / 'good.jpg', quality=90)
  jpg = (tmp_path / 'good.jpg').read_bytes()
  (tmp_path / 'cut.jpg').write_bytes(jpg[:len(jpg) // 3])
  Image.fromarray(_rgb(1, 1)).save(tmp_path / 'one.png')
  for name, reason in (('cut.png', 'corrupt or truncated'), ('cut.jpg', 'corrupt or truncated'),
                       ('one.png', 'too small')):
    with pytest.raises(images.ImageError, match=reason):
      images.read_image(str(tmp_path / name), 16)
  Image.new('L', (8000, 8000)).save(tmp_path / 'huge.png')  # 64 Mpx: decoded, then reduced
  assert images.read_image(str(tmp_path / 'huge.png'), 16).shape == (16, 16, 3)
  Image.new('1', (12000, 12000)).save(tmp_path / 'vast.png')  # 144 Mpx: refused unread
  with pytest.raises(images.ImageError, match='too large'):
    images.read_image(str(tmp_path / 'vast.png'), 16)


def test_folder_builder_end_to_end(tmp_path):
  root = str(tmp_path / 'data')
  pairs = _odd_but_valid_pairs()
  _folder(root, pairs)
  lists = {'train': ['rgb_png', 'jpg', 'bmp'], 'validation': ['tiff'], 'quality': ['gray'],
           'test': ['rgba', 'jpg']}
  os.makedirs(os.path.join(root, 'lists'))
  for split, ids in lists.items():
    with open(os.path.join(root, 'lists', f'{split}.txt'), 'w') as f:
      f.write('# comment\n' + '\n'.join(ids) + '\n\n')
  cfg = _data_config(root, ','.join(f'{s}=lists/{s}.txt' for s in lists), str(tmp_path / 'tfds'))
  splits = loading.load_splits(cfg)
  for split, ids in lists.items():
    assert splits[split].ids == tuple(ids)  # list order
    assert splits[split].images.shape == (len(ids), 16, 16, 3)
    assert set(np.unique(splits[split].masks)) <= {0, 1}
  np.testing.assert_array_equal(splits['test'].images[1], splits['train'].images[1])  # 'jpg' twice
  # no lists: a seeded 60/10/15/15 split of every pair
  default = loading.load_splits(_data_config(root, '', str(tmp_path / 'tfds')))
  assert sorted(i for s in default.values() for i in s.ids) == sorted(pairs)


def _data_config(root, splits, data_dir, name='folder'):
  from configs import default
  cfg = default.get_config().data
  cfg.name, cfg.root, cfg.splits, cfg.data_dir, cfg.image_size = name, root, splits, data_dir, 16
  return cfg


def test_folder_errors_list_offending_ids(tmp_path):
  root = str(tmp_path / 'data')
  img, mask = Image.fromarray(_rgb(20, 20)), Image.fromarray(_disc(20, 20))
  _folder(root, {'ok': (img, '.png', mask), 'no_mask_a': (img, '.png', None),
                 'no_mask_b': (img, '.jpg', None), 'no_image': (None, '', mask)})
  with pytest.raises(builders.DataError) as e:
    builders.real_builder(_data_config(root, '', str(tmp_path / 'tfds')))
  text = str(e.value)
  assert '2 image(s)' in text and 'no_mask_a' in text and 'no_mask_b' in text
  assert '1 mask(s)' in text and 'no_image' in text

  root2 = str(tmp_path / 'sizes')
  _folder(root2, {'ok': (img, '.png', mask),
                  'wrong': (img, '.png', Image.fromarray(_disc(24, 20)))})
  with open(os.path.join(root2, 'all.txt'), 'w') as f:
    f.write('ok\nwrong\n')
  with pytest.raises(builders.DataError, match=r'another size.*wrong \(image 20x20, mask 20x24\)'):
    builders.real_builder(_data_config(root2, 'test=all.txt', str(tmp_path / 'tfds')))
  with pytest.raises(builders.DataError, match='2 pairs cannot be split four ways'):
    builders.real_builder(_data_config(root2, '', str(tmp_path / 'tfds')))

  root3 = str(tmp_path / 'lists')
  _folder(root3, {'a': (img, '.png', mask), 'b': (img, '.png', mask)})
  with open(os.path.join(root3, 'test.txt'), 'w') as f:
    f.write('a\nghost1\nghost2\n')
  with pytest.raises(builders.DataError, match=r'test\.txt \(split test\) names 2 id\(s\).*ghost1, ghost2'):
    builders.real_builder(_data_config(root3, 'test=test.txt', str(tmp_path / 'tfds')))
  # a split the run needs but the lists do not give
  with open(os.path.join(root3, 'train.txt'), 'w') as f:
    f.write('a\n')
  with pytest.raises(builders.DataError, match="no 'validation' split"):
    loading.load_splits(_data_config(root3, 'train=train.txt', str(tmp_path / 'tfds')))


def test_isic2017_official_layout(tmp_path):
  root = tmp_path / 'isic'
  layout = {'ISIC-2017_Training_Data': ['0000000', '0000001', '0000002'],
            'ISIC-2017_Validation_Data': ['0001000', '0001001']}
  for folder, numbers in layout.items():
    gt = folder.replace('_Data', '_Part1_GroundTruth')
    os.makedirs(root / folder)
    os.makedirs(root / gt)
    for n in numbers:
      Image.fromarray(_rgb(30, 40)).save(root / folder / f'ISIC_{n}.jpg')
      Image.fromarray(_rgb(30, 40)).save(root / folder / f'ISIC_{n}_superpixels.png')  # ignored
      Image.fromarray(_disc(30, 40)).save(root / gt / f'ISIC_{n}_segmentation.png')
  pairs, splits = builders.isic2017_pairs(str(root))
  assert splits == {'train': ['ISIC_0000000', 'ISIC_0000001', 'ISIC_0000002'],
                    'validation': ['ISIC_0001000', 'ISIC_0001001'], 'test': []}
  assert pairs['ISIC_0001001'][1].endswith('ISIC_0001001_segmentation.png')
  loaded = loading.load_splits(_data_config(str(root), '', str(tmp_path / 'tfds'), 'isic2017'),
                                names=('train', 'validation'))
  assert loaded['train'].images.shape == (3, 16, 16, 3)
  os.remove(root / 'ISIC-2017_Validation_Part1_GroundTruth' / 'ISIC_0001000_segmentation.png')
  with pytest.raises(builders.DataError, match='validation: 1 image\\(s\\) without a mask \\(ISIC_0001000\\)'):
    builders.isic2017_pairs(str(root))


@pytest.mark.skipif(not os.path.isdir(SHARED_ISIC), reason='../shared/data/isic2017 not present')
def test_reads_first_images_of_shared_isic2017(tmp_path):
  root = os.path.join(SHARED_ISIC, '128')
  first = sorted(os.listdir(os.path.join(root, 'images')))[:4]
  ids = [os.path.splitext(f)[0] for f in first]
  with open(tmp_path / 'few.txt', 'w') as f:
    f.write('\n'.join(ids))
  spec = ','.join(f'{s}={tmp_path / "few.txt"}' for s in builders.SPLITS)
  splits = loading.load_splits(_data_config(root, spec, str(tmp_path / 'tfds')))
  test = splits['test']
  assert test.ids == tuple(ids) and test.images.shape == (4, 16, 16, 3)
  assert 0 < test.masks.mean() < 1  # lesions present, not everything
  assert test.images.std() > 5  # real pictures, not blanks
