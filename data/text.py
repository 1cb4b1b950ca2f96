"""Token datasets: character/byte-level text, for language models and text classification.

- `tiny_text` (offline): the English descriptions of scikit-learn's datasets (~43k characters,
  they ship inside scikit-learn) as a character-level LM corpus; the last 10 % is the test
  split, less every 32-byte run that also occurs in the training text.
- `imdb_reviews` (classification) and `lm1b` (LM) from TFDS for users with internet, read with
  `tfds.data_source`. The tokenizer is bytes (UTF-8 byte + 1; 0 is padding): it ships with
  Python, needs no vocabulary file and never meets an unknown token. Texts are cut to
  `data.seq_length` tokens (imdb) or padded with a mask (both).

Batches: `inputs` int32 (batch, time), `mask` (batch, time); for an LM `targets` (batch, time)
is the next token of each position; for classification `targets` (batch,) is the label.
"""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np

from data import tfds_source
from data.base import ArraySplit, Dataset

BYTE_VOCAB = 257  # 0 = padding, 1..256 = bytes


def _descr_text() -> str:
  import sklearn.datasets
  folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), 'descr')
  texts = []
  for path in sorted(glob.glob(os.path.join(folder, '*.rst'))):
    with open(path, encoding='utf-8') as f:
      texts.append(f.read())
  return '\n\n'.join(texts)


def lm_windows(tokens: np.ndarray, seq_length: int, stride: int) -> ArraySplit:
  """Windows of seq_length + 1 tokens every `stride`: inputs = w[:-1], targets = w[1:]."""
  starts = np.arange(0, len(tokens) - seq_length - 1, stride)
  idx = starts[:, None] + np.arange(seq_length + 1)[None, :]
  windows = tokens[idx]
  return ArraySplit({'inputs': windows[:, :-1].astype(np.int32),
                     'targets': windows[:, 1:].astype(np.int32),
                     'mask': np.ones((len(starts), seq_length), bool)})


SHARED_RUN = 32   # no run of this many bytes occurs in both tiny_text splits


def unshared_segments(test: bytes, train: bytes, n: int = SHARED_RUN) -> list[bytes]:
  """The maximal pieces of `test` that contain no n-byte run occurring in `train`.

  scikit-learn's dataset descriptions share boilerplate (license text, citations) verbatim:
  without this, 862 of the 4,309 test bytes sat in 32+-byte runs copied from the training
  text, and a model could score by memorizing them."""
  seen = {train[i:i + n] for i in range(len(train) - n + 1)}
  shared = np.zeros(len(test), bool)
  for i in range(len(test) - n + 1):
    if test[i:i + n] in seen:
      shared[i:i + n] = True
  edges = np.flatnonzero(np.diff(np.concatenate([[True], shared, [True]]).astype(np.int8)))
  return [test[a:b] for a, b in zip(edges[::2], edges[1::2])]


def load_tiny_text(data_config) -> Dataset:
  text = _descr_text().encode('utf-8')
  cut = int(0.9 * len(text))
  t = data_config.seq_length
  as_tokens = lambda b: np.frombuffer(b, np.uint8).astype(np.int32) + 1
  pieces = [lm_windows(as_tokens(seg), t, stride=t)
            for seg in unshared_segments(text[cut:], text[:cut]) if len(seg) > t + 1]
  test = ArraySplit({k: np.concatenate([p.arrays[k] for p in pieces]) for k in pieces[0].arrays})
  return Dataset(train=lm_windows(as_tokens(text[:cut]), t, stride=t // 2),
                 test=test,
                 num_classes=BYTE_VOCAB, input_shape=(t,), task='language_model',
                 kind='tokens', vocab_size=BYTE_VOCAB)


def encode_bytes(texts, seq_length: int) -> tuple[np.ndarray, np.ndarray]:
  """UTF-8 bytes + 1, cut to seq_length, right-padded with 0; and the mask of real tokens."""
  out = np.zeros((len(texts), seq_length), np.int32)
  for i, text in enumerate(texts):
    if isinstance(text, str):
      text = text.encode('utf-8')
    b = np.frombuffer(bytes(text), np.uint8)[:seq_length]
    out[i, :len(b)] = b.astype(np.int32) + 1
  return out, out > 0


@dataclasses.dataclass
class TfdsTextSplit:
  source: object
  seq_length: int
  language_model: bool

  def __len__(self) -> int:
    return len(self.source)

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    records = [self.source[int(i)] for i in indices]
    if self.language_model:  # predict token t+1 from tokens <= t
      tokens, mask = encode_bytes([r['text'] for r in records], self.seq_length + 1)
      return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'mask': mask[:, 1:]}
    tokens, mask = encode_bytes([r['text'] for r in records], self.seq_length)
    return {'inputs': tokens, 'mask': mask,
            'targets': np.asarray([r['label'] for r in records], np.int32)}


def tfds_loader(name: str, language_model: bool):
  def load(data_config) -> Dataset:
    sources = tfds_source.open_splits(name, ['train', 'test'], data_config)
    t = data_config.seq_length
    num_classes = (BYTE_VOCAB if language_model
                   else sources[0].dataset_info.features['label'].num_classes)
    return Dataset(train=TfdsTextSplit(sources[0], t, language_model),
                   test=TfdsTextSplit(sources[1], t, language_model),
                   num_classes=num_classes, input_shape=(t,),
                   task='language_model' if language_model else 'classification',
                   kind='tokens', vocab_size=BYTE_VOCAB)
  return load
