"""Data: batches are a pure function of (seed, step); the TFDS path works on mock data."""

import os

import jax
import numpy as np
import pytest

import data as data_lib
from conftest import tiny_config
from data import digits, pipeline
from errors import ConfigError


def test_batches_are_a_pure_function_of_seed_and_step():
  split = data_lib.ArraySplit({'inputs': np.arange(100.0)[:, None], 'targets': np.arange(100)})
  a = pipeline.TrainBatches(split, 16, seed=3)
  b = pipeline.TrainBatches(split, 16, seed=3)
  sequential = [a(s)['targets'] for s in range(20)]
  for s in (17, 3, 12, 0, 19):  # any order, fresh object: same batches
    np.testing.assert_array_equal(b(s)['targets'], sequential[s])
  # An epoch (6 steps of 16 out of 100) sees distinct examples; epochs are reshuffled.
  epoch0 = np.concatenate(sequential[:6])
  assert len(set(epoch0.tolist())) == 96
  assert not np.array_equal(sequential[0], sequential[6])
  c = pipeline.TrainBatches(split, 16, seed=4)
  assert not np.array_equal(c(0)['targets'], sequential[0])
  prefetched = [batch['targets'] for _, batch in a.prefetch(5, 9)]
  for got, want in zip(prefetched, sequential[5:9]):
    np.testing.assert_array_equal(got, want)


class CountingSplit(data_lib.ArraySplit):
  """Counts the examples read (what a host pulls from storage)."""
  read = 0

  def get(self, indices):
    self.read += len(indices)
    return super().get(indices)


@pytest.mark.parametrize('augment,transform', [('none', False), ('crop_flip', False),
                                               ('shift1', False), ('none', True)])
def test_the_shares_of_the_processes_put_together_are_the_batch_one_process_reads(
    augment, transform):
  """Multi-host, host path: process i of n keeps rows [i b/n, (i + 1) b/n) of each step's batch,
  and the shares put together are bit for bit the batch one process reads (same examples, same
  augmentation and dataset transform (digits_hard's), same order)."""
  rng = np.random.default_rng(0)
  arrays = {'inputs': rng.uniform(size=(200, 12, 12, 1)).astype(np.float32),
            'targets': np.arange(200)}
  fn = digits.hard_transform if transform else None
  whole = pipeline.TrainBatches(CountingSplit(arrays), 32, seed=5, augment=augment, transform=fn)
  shares = [pipeline.TrainBatches(CountingSplit(arrays), 32, seed=5, augment=augment,
                                  share=(i, 4), transform=fn) for i in range(4)]
  for step in (0, 7, 13):   # 13: a later epoch
    want = whole(step)
    parts = [s(step) for s in shares]
    for key in want:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), want[key])
  assert [s.rows for s in shares] == [slice(0, 8), slice(8, 16), slice(16, 24), slice(24, 32)]
  with pytest.raises(ConfigError, match='does not split evenly over 3 processes'):
    pipeline.TrainBatches(CountingSplit(arrays), 32, seed=5, share=(0, 3))


def test_digits_hard_transforms_every_step_afresh_and_tests_on_fixed_copies():
  ds = data_lib.load_dataset(tiny_config(**{"data.name": "digits_hard"}).data)
  clean = data_lib.load_dataset(tiny_config().data)
  assert ds.input_shape == (12, 12, 1) and len(ds.train) == len(clean.train)
  # the test set: TEST_COPIES transformed copies of each of the 360 test digits, labels kept
  assert len(ds.test) == digits.TEST_COPIES * len(clean.test) >= 3600
  targets = ds.test.get(np.arange(len(ds.test)))['targets']
  np.testing.assert_array_equal(np.sort(targets), np.sort(np.repeat(
      clean.test.get(np.arange(360))['targets'], digits.TEST_COPIES)))
  # shuffled: any 64 test images in a row (a train-mode evaluation batch) mix the classes
  assert min(len(set(targets[i:i + 64])) for i in range(0, len(targets) - 64, 64)) >= 8
  inputs = ds.test.get(np.arange(len(ds.test)))['inputs']
  assert len({x.tobytes() for x in inputs}) == len(ds.test)   # every copy a different version
  # train: stored clean; each step's batch is a pure function of (seed, step), and differs
  # from the stored images and from another step's transform of the same images
  batches = pipeline.TrainBatches(ds.train, 64, 0, transform=ds.train_transform)
  again = pipeline.TrainBatches(ds.train, 64, 0, transform=ds.train_transform)
  np.testing.assert_array_equal(batches(3)['inputs'], again(3)['inputs'])
  stored = ds.train.get(batches.indices(3))['inputs']
  assert np.abs(batches(3)['inputs'] - stored).mean() > 0.3
  key = lambda s: pipeline.key_of(0, pipeline.TRANSFORM, s)
  one, other = (np.asarray(jax.jit(ds.train_transform)(stored, key(s))) for s in (3, 4))
  np.testing.assert_array_equal(one, batches(3)['inputs'])
  assert not np.allclose(one, other)
  # with every strength at 0 the transform is the identity (the clean upsampled digit)
  with pytest.MonkeyPatch.context() as m:
    for name in ('ROTATE_DEGREES', 'NOISE_STD', 'BAR_PROBABILITY'):
      m.setattr(digits, name, 0.0)
    m.setattr(digits, 'SHIFT_PIXELS', 0)
    np.testing.assert_allclose(ds.train_transform(stored, key(3)), stored, atol=1e-5)


def test_digits_hard_rotation_is_scipys_bilinear_rotation():
  """jax's rotation of the hard digits against scipy.ndimage.rotate (order 1, zero outside the
  image, interpolated toward it at the edge: scipy's 'grid-constant')."""
  from scipy import ndimage
  images = np.random.default_rng(0).uniform(size=(6, 12, 12)).astype(np.float32)
  for image, degrees in zip(images, (-20.0, -7.5, 0.0, 3.3, 11.0, 20.0)):
    want = ndimage.rotate(image, degrees, reshape=False, order=1, mode='grid-constant')
    np.testing.assert_allclose(digits.rotate(image, degrees), want, atol=2e-6)
  # and a whole-pixel move against numpy slicing
  moved = np.asarray(digits.move(images[0], 2, -1))
  want = np.zeros_like(images[0])
  want[2:, :-1] = images[0][:-2, 1:]
  np.testing.assert_array_equal(moved, want)


POINTS = [('none', False), ('crop_flip', False), ('shift1', False), ('none', True)]


@pytest.mark.parametrize('augment,transform', POINTS)
def test_the_device_path_makes_bit_for_bit_the_host_paths_batches(augment, transform):
  """data.pipeline=device (the split stored on the mesh, each step's batch made there) and
  =host (made on the host's CPU device) give the same batches, for one seed and for several
  vmapped seeds (each seed its own order and draws), uint8-stored images decoded included."""
  from training import parallel
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, size=(150, 12, 12, 1)).astype(np.uint8)

  class Stored(data_lib.ArraySplit):   # stored as uint8, decoded to floats (as TFDS images)
    def stored(self, indices):
      return super().get(indices)

    @staticmethod
    def decode(examples):
      return {**examples, 'inputs': examples['inputs'].astype(np.float32) / 255.0}
  split = Stored({'inputs': pixels, 'targets': np.arange(150)})
  fn = digits.hard_transform if transform else None
  mesh = parallel.data_mesh()
  seeds = [3, 8]
  host = [pipeline.TrainBatches(split, 16, seed=s, augment=augment, transform=fn) for s in seeds]
  one = pipeline.DeviceBatches([split], 16, seeds[:1], mesh, augment, fn)
  both = pipeline.DeviceBatches([split, split], 16, seeds, mesh, augment, fn)
  assert one.stored_bytes() == both.stored_bytes() == pixels.nbytes + 150 * 4   # one copy (int32 labels)
  for step in (0, 5, 9, 23):   # 9, 23: later epochs
    want = [h(step) for h in host]
    got, stacked = jax.device_get(one(step)), jax.device_get(both(step))
    assert got['inputs'].dtype == np.float32
    for key in want[0]:
      np.testing.assert_array_equal(got[key], want[0][key])
      for k in range(2):
        np.testing.assert_array_equal(stacked[key][k], want[k][key])
  assert not np.array_equal(want[0]['targets'], want[1]['targets'])


def test_what_auto_places_the_batches_on_each_backend():
  """Forcing the backend's name: `auto` is the host on the CPU (measured faster there) and, until
  the speed suite has run on them, on GPUs and TPUs; `stream` for a dataset too large to hold,
  where the device place (the whole split on the devices) is refused; an asked-for place is
  kept."""
  assert [pipeline.resolve('auto', b) for b in ('cpu', 'gpu', 'tpu')] == ['host'] * 3
  assert [pipeline.resolve('auto', b, streamed=True) for b in ('cpu', 'gpu')] == ['stream'] * 2
  assert [pipeline.resolve(p, 'gpu') for p in ('host', 'device', 'stream')] == [
      'host', 'device', 'stream']
  with pytest.raises(ConfigError, match='holds the whole training split on the devices'):
    pipeline.resolve('device', 'gpu', streamed=True)
  with pytest.raises(ConfigError,
                     match="unknown data.pipeline 'gpu'; valid: auto, device, host, stream"):
    pipeline.check('none', 'gpu')


def _imagenet_shaped(n=40, size=24, classes=1000):
  """A small ImageNet-shaped training split: RGB uint8 images (smaller than 224: CPU tests),
  labels over 1000 classes, stored as uint8 and decoded where the batch is made."""
  rng = np.random.default_rng(1)
  return data_lib.Uint8Images({'inputs': rng.integers(0, 256, (n, size, size, 3), np.uint8),
                               'targets': rng.integers(0, classes, n).astype(np.int32)})


@pytest.mark.parametrize('augment,workers', [('crop_flip', 0), ('none', 0), ('crop_flip', 2)])
def test_the_stream_path_makes_bit_for_bit_the_host_paths_batches(augment, workers):
  """data.pipeline=stream (records read through Grain, in `workers` spawned processes, sent
  as uint8, finished on the devices) gives the host path's batches, by step and prefetched
  across an epoch boundary; it reads only the step's examples."""
  from data import stream
  from training import parallel
  split = _imagenet_shaped()
  host = pipeline.TrainBatches(split, 8, seed=4, augment=augment)
  streamed = stream.StreamBatches(split, 8, 4, parallel.data_mesh(), augment, workers=workers)
  got = {step: jax.device_get(b) for step, b in streamed.prefetch(2, 8)}   # epochs of 5 steps
  assert sorted(got) == list(range(2, 8))
  got[9] = jax.device_get(streamed(9))
  for step, batch in got.items():
    want = host(step)
    assert batch['inputs'].dtype == np.float32
    for key in want:
      np.testing.assert_array_equal(batch[key], want[key], err_msg=f'{key} at step {step}')


def test_each_process_streams_only_its_rows_of_every_batch():
  """Per-host slices: with 4 processes, each one's stream reads its quarter of each global
  batch's examples and no other, and the quarters put together are the batch's examples."""
  from data import stream
  from training import parallel
  split = _imagenet_shaped()
  read = []

  class Recording(data_lib.Uint8Images):
    def stored(self, indices):
      read.append(np.asarray(indices))
      return super().stored(indices)
  recording = Recording(split.arrays)
  shares = [stream.StreamBatches(recording, 8, 4, parallel.data_mesh(), share=(i, 4))
            for i in range(4)]
  host = pipeline.TrainBatches(split, 8, seed=4)
  for step in (0, 3, 6):
    parts = [s._rows_of(step) for s in shares]
    assert all(len(p) == 2 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), host.indices(step))
  read.clear()
  for _ in shares[2].prefetch(0, 3):
    pass
  np.testing.assert_array_equal(np.concatenate(read), np.concatenate(
      [host.indices(step)[4:6] for step in range(3)]))


def test_seeds_with_different_training_examples_each_get_their_own_copy():
  """Variable-length data draws each seed's lengths: the device path stores one copy per seed
  and each seed's batches come from its own copy."""
  from training import parallel
  a = data_lib.ArraySplit({'inputs': np.arange(40.0)[:, None], 'targets': np.arange(40)})
  b = data_lib.ArraySplit({'inputs': -np.arange(40.0)[:, None], 'targets': np.arange(40)})
  both = pipeline.DeviceBatches([a, b], 8, [1, 1], parallel.data_mesh())
  assert both.stored_bytes() == 2 * (40 * 4 + 40 * 4)   # float32 inputs, int32 labels
  got = jax.device_get(both(2))
  np.testing.assert_array_equal(got['inputs'][1], -got['inputs'][0])
  np.testing.assert_array_equal(got['inputs'][0], pipeline.TrainBatches(a, 8, 1)(2)['inputs'])


def test_crop_flip_is_a_shifted_or_mirrored_crop_of_the_padded_image():
  images = np.random.default_rng(0).normal(size=(20, 6, 6, 2)).astype(np.float32)
  out = np.asarray(pipeline.crop_flip(images, jax.random.key(1), pad=2))
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(len(images)):
    candidates = [padded[i, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
    candidates += [c[:, ::-1] for c in candidates]
    assert any(np.array_equal(out[i], c) for c in candidates)
  assert not np.array_equal(out, images)


def test_shift1_moves_each_image_by_at_most_one_pixel_with_edge_fill():
  """Each output is the input moved by (dy, dx) in {-1, 0, 1}^2, computed here by indexing
  with clamped coordinates (an independent formulation of edge padding); every move occurs."""
  images = np.random.default_rng(0).normal(size=(200, 6, 6, 1)).astype(np.float32)
  out = np.asarray(pipeline.shift(images, jax.random.key(1), pad=1))
  idx = np.arange(6)
  moves = set()
  for i in range(len(images)):
    found = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if np.array_equal(
        out[i], images[i][np.clip(idx + dy, 0, 5)][:, np.clip(idx + dx, 0, 5)])]
    assert len(found) == 1
    moves.add(found[0])
  assert len(moves) == 9


def test_digits_split_is_fixed_and_standardized():
  ds = data_lib.load_dataset(tiny_config().data)
  assert (len(ds.train), len(ds.test)) == (1437, 360)
  x = ds.train.get(np.arange(len(ds.train)))['inputs']
  assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-4
  again = data_lib.load_dataset(tiny_config(seed=5).data)
  np.testing.assert_array_equal(ds.test.get(np.arange(360))['targets'],
                                again.test.get(np.arange(360))['targets'])


def test_unknown_dataset_lists_valid_names():
  with pytest.raises(ConfigError, match='cifar10'):
    data_lib.load_dataset(tiny_config(**{'data.name': 'cifar100'}).data)


@pytest.mark.parametrize('name,shape', [('cifar10', (32, 32, 3)), ('mnist', (28, 28, 1))])
def test_tfds_path_on_mock_data(name, shape):
  """The real TFDS code path (tfds.data_source), with examples generated by tfds' mock."""
  import tensorflow_datasets as tfds
  config = tiny_config(**{'data.name': name, 'data.download': False})
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data_lib.load_dataset(config.data)
    batch = pipeline.TrainBatches(ds.train, 8, seed=0, augment='crop_flip')(0)
  assert ds.num_classes == 10 and ds.input_shape == shape
  assert batch['inputs'].shape == (8, *shape) and batch['inputs'].dtype == np.float32
  assert batch['targets'].shape == (8,) and batch['targets'].max() < 10
  assert np.isfinite(batch['inputs']).all()


def test_imagenet2012_on_mock_data_is_streamed_as_centre_squares():
  """The TFDS ImageNet path (tfds' mock: images of random sizes): streamed by auto, each image
  stored as its 224x224 centre square, the stream's batch the host path's bit for bit."""
  import tensorflow_datasets as tfds
  from data import stream
  from training import parallel
  config = tiny_config(**{'data.name': 'imagenet2012', 'data.download': False})
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data_lib.load_dataset(config.data)
    assert ds.streamed and ds.input_shape == (224, 224, 3) and ds.num_classes == 1000
    assert pipeline.resolve('auto', 'cpu', ds.streamed) == 'stream'
    assert len({ds.train.source[i]['image'].shape for i in range(12)}) > 1   # sizes vary
    got = jax.device_get(stream.StreamBatches(ds.train, 4, 0, parallel.data_mesh(),
                                              'crop_flip')(1))
    want = pipeline.TrainBatches(ds.train, 4, seed=0, augment='crop_flip')(1)
    evaluated = ds.test.get(np.arange(3))
  assert got['inputs'].shape == (4, 224, 224, 3) and evaluated['inputs'].shape == (3, 224, 224, 3)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize('shape', [(20, 40, 3), (40, 20, 3), (30, 60, 1)])
def test_centre_square_resizes_the_shorter_side_and_keeps_the_middle(shape):
  """Half black, half white along the longer side: resized so the shorter side is 224, the
  longer one is twice that, and the centre square has the edge down its middle (between
  column or row 111 and 112, blurred over the upsampling's scale); a uniform image stays
  uniform."""
  from data import tfds_images
  h, w, c = shape
  image = np.zeros(shape, np.uint8)
  if w > h:
    image[:, w // 2:] = 255
  else:
    image[h // 2:] = 255
  out = tfds_images.centre_square(image, 224)
  assert out.shape == (224, 224, c) and out.dtype == np.uint8
  lines = out if h > w else out.transpose(1, 0, 2)   # the edge runs across axis 0 or 1
  blur = int(np.ceil(224 / min(h, w))) + 1   # bilinear upsampling spreads a source pixel
  assert (lines[:112 - blur] == 0).all() and (lines[112 + blur:] == 255).all()
  assert 0 < lines[111].mean() < lines[112].mean() < 255   # the edge at the middle
  assert (tfds_images.centre_square(np.full(shape, 77, np.uint8), 224) == 77).all()


@pytest.mark.parametrize('name', ['cifar10', 'imdb_reviews'])
def test_an_unprepared_tfds_dataset_offline_is_one_line_and_creates_nothing(tmp_path, name):
  """No prepared data and data.download=False: a ConfigError in seconds pointing to README's
  TFDS section; nothing downloaded, nothing created in the data directory."""
  import time
  from errors import ConfigError
  config = tiny_config(**{'data.name': name, 'data.download': False,
                          'data.data_dir': str(tmp_path)})
  t0 = time.time()
  with pytest.raises(ConfigError, match=f'TFDS dataset {name} is not prepared in {tmp_path} '
                                        r'and data.download is False.*Real datasets \(TFDS\)'):
    data_lib.load_dataset(config.data, config.seed)
  assert time.time() - t0 < 60 and os.listdir(tmp_path) == []


@pytest.mark.parametrize('name', ['digits', 'digits_hard', 'tiny_text'])
def test_validation_examples_are_held_out_of_train_and_fixed(name):
  """data.validation_examples moves a fixed choice of training examples (the same for every run
  seed) out of train: train and validation are disjoint and together hold every training
  example; the test split is untouched; with a per-step transform (digits_hard) the validation
  split holds fixed transformed copies of the held-out digits."""
  plain = data_lib.load_dataset(tiny_config(**{'data.name': name}).data)
  config = tiny_config(**{'data.name': name, 'data.validation_examples': 100})
  ds, again = data_lib.load_dataset(config.data), data_lib.load_dataset(config.data, seed=3)
  assert len(ds.train) == len(plain.train) - 100
  key = lambda a: [x.tobytes() for x in a['inputs']]
  all_train = key(plain.train.get(np.arange(len(plain.train))))
  kept = key(ds.train.get(np.arange(len(ds.train))))
  copies = data_lib.VALIDATION_COPIES if plain.train_transform else 1
  assert len(ds.validation) == 100 * copies
  held = sorted(set(all_train) - set(kept))
  assert len(held) == 100 or name == 'tiny_text'   # overlapping LM windows may repeat
  assert set(kept) <= set(all_train)
  v = ds.validation.get(np.arange(len(ds.validation)))
  if plain.train_transform is None:
    assert sorted(set(key(v))) == held
  else:   # transformed copies: each differs from every stored digit, and the labels match
    assert not set(key(v)) & set(all_train)
    np.testing.assert_array_equal(np.sort(v['targets']), np.sort(np.repeat(
        [plain.train.get(np.array([all_train.index(h)]))['targets'][0] for h in held], copies)))
  np.testing.assert_array_equal(v['inputs'], again.validation.get(np.arange(len(v['inputs'])))['inputs'])
  np.testing.assert_array_equal(ds.test.get(np.arange(10))['inputs'],
                                plain.test.get(np.arange(10))['inputs'])
  with pytest.raises(ConfigError, match='validation_examples'):
    data_lib.load_dataset(tiny_config(**{'data.name': name,
                                         'data.validation_examples': len(plain.train)}).data)
