"""Image reading details that a user meets: EXIF orientation, folders with subfolders."""

import os

import numpy as np
from PIL import Image

from segqual_jax.data import images


def test_exif_orientation_is_applied(tmp_path):
  """A phone JPEG stored sideways with orientation 6 ("rotate 90 CW to view") is read upright."""
  upright = np.zeros((40, 60, 3), np.uint8)  # wide: the top half red, the bottom half blue
  upright[:20] = (220, 30, 30)
  upright[20:] = (30, 30, 220)
  stored = np.rot90(upright, 1)  # what the camera wrote: 60 tall, 40 wide, red on the left
  exif = Image.Exif()
  exif[0x0112] = 6
  path = str(tmp_path / 'phone.jpg')
  Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)
  got = images.read_image(path, 32).astype(int)
  assert got[4, 16, 0] > 150 and got[4, 16, 2] < 100  # top is red
  assert got[28, 16, 2] > 150 and got[28, 16, 0] < 100  # bottom is blue
  plain = str(tmp_path / 'plain.jpg')
  Image.fromarray(np.ascontiguousarray(stored)).save(plain, quality=95)  # no tag: as stored
  got = images.read_image(plain, 32).astype(int)
  assert got[16, 4, 0] > 150 and got[16, 28, 0] < 100  # as stored: red on the left


def test_list_images_recursive_gives_relative_paths(tmp_path):
  for rel in ('a.png', 'sub/b.JPG', 'sub/deeper/c.bmp', 'sub/notes.txt', '.hidden/d.png'):
    os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
    (tmp_path / rel).write_bytes(b'x')
  assert images.list_images_recursive(str(tmp_path)) == ['a.png', 'sub/b.JPG', 'sub/deeper/c.bmp']
