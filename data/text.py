"""Token datasets: character/byte-level text, for language models and text classification.

- `tiny_text` (offline): the English descriptions of scikit-learn's datasets (~43k characters,
  they ship inside scikit-learn) as a character-level LM corpus; the last 10 % is the test
  split, less every 32-byte run that also occurs in the training text. For tests and smoke
  runs: a model memorizes it in a few hundred steps.
- `docs_text` (offline): the docstrings of numpy and scipy, the versions requirements.txt pins
  (~6 MB of distinct English technical prose, doctest lines dropped, each paragraph once), for
  the claims about training language models: `docs_corpus` documents it.
- `imdb_reviews` (classification) and `lm1b` (LM) from TFDS for users with internet, read with
  `tfds.data_source`. The tokenizer is bytes (UTF-8 byte + 1; 0 is padding): it ships with
  Python, needs no vocabulary file and never meets an unknown token. Texts are cut to
  `data.seq_length` tokens (imdb) or padded with a mask (both).

Batches: `inputs` int32 (batch, time), `mask` (batch, time); for an LM `targets` (batch, time)
is the next token of each position; for classification `targets` (batch,) is the label.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import hashlib
import importlib.util
import os

import numpy as np

from errors import ConfigError

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


def _window_hashes(data: bytes, n: int) -> np.ndarray:
  """A 64-bit polynomial hash of every n-byte window of `data` (wrapping arithmetic)."""
  b = np.frombuffer(data, np.uint8).astype(np.uint64)
  count = len(b) - n + 1
  if count <= 0:
    return np.zeros(0, np.uint64)
  h = np.zeros(count, np.uint64)
  base = np.uint64(1_000_003)
  with np.errstate(over='ignore'):
    for j in range(n):
      h = h * base + b[j:j + count] + np.uint64(1)
  return h


def unshared_pieces(held: bytes, others: list[bytes], n: int = SHARED_RUN) -> list[bytes]:
  """`unshared_segments` for megabytes: the maximal pieces of `held` with no n-byte run that
  occurs in any of `others`, by window hashes (a collision can only cut more)."""
  seen = np.unique(np.concatenate([_window_hashes(o, n) for o in others]))
  hit = np.flatnonzero(np.isin(_window_hashes(held, n), seen))
  shared = np.zeros(len(held) + 1, np.int32)
  np.add.at(shared, hit, 1)
  np.add.at(shared, np.minimum(hit + n, len(held)), -1)
  shared = np.cumsum(shared[:-1]) > 0
  edges = np.flatnonzero(np.diff(np.concatenate([[True], shared, [True]]).astype(np.int8)))
  return [held[a:b] for a, b in zip(edges[::2], edges[1::2])]


DOCS_PACKAGES = ('numpy', 'scipy')
DOCS_SKIP = ('tests', 'test', 'testing', '_vendor', 'vendored')
DOCS_HELD_OUT = {0: 'test', 1: 'validation'}    # sha1(file path) % 20; the rest train
# sha256 of the three splits built from numpy 2.4.6 and scipy 1.17.1 (requirements.txt): any
# other install gives another corpus, and numbers on it are not comparable
DOCS_SHA256 = '2dd0f6611ebc64d47f723996b5a97b90e0fcf5ad50f4f463d6fba50be34d4a99'


def _docstrings(package: str) -> list[tuple[str, str]]:
  """(path in the package, its docstrings' paragraphs joined) for every source file, in order."""
  root = os.path.dirname(importlib.util.find_spec(package).origin)
  out = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in DOCS_SKIP)
    for name in sorted(f for f in files if f.endswith('.py')):
      path = os.path.join(folder, name)
      try:
        with open(path, encoding='utf-8') as f:
          tree = ast.parse(f.read())
      except (SyntaxError, UnicodeDecodeError, ValueError):
        continue
      kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
      texts = [ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds)]
      out.append((f'{package}/{os.path.relpath(path, root)}', '\n\n'.join(filter(None, texts))))
  return out


def docs_corpus() -> dict[str, bytes]:
  """{'train', 'validation', 'test'}: the docstrings of DOCS_PACKAGES, split by source file
  (a file's place from the hash of its path, so a split never sees part of another's
  documents), doctest lines (`>>>`, `...`) dropped, every paragraph kept once (its first
  occurrence), paragraphs of under 40 bytes dropped. The held-out splits keep only their pieces
  with no 32-byte run found in another split (validation against train; test against both),
  so no split can be scored by copying another. Built once per install (~15 s) and cached."""
  seen, splits = set(), {'train': [], 'validation': [], 'test': []}
  for package in DOCS_PACKAGES:
    for path, doc in _docstrings(package):
      split = DOCS_HELD_OUT.get(int(hashlib.sha1(path.encode()).hexdigest(), 16) % 20, 'train')
      for para in doc.split('\n\n'):
        lines = [line for line in para.split('\n')
                 if not line.lstrip().startswith(('>>>', '...'))]
        para = '\n'.join(lines).strip()
        if len(para.encode('utf-8')) >= 40 and para not in seen:
          seen.add(para)
          splits[split].append(para)
  train, validation, test = (('\n\n'.join(splits[s]) + '\n\n').encode('utf-8')
                             for s in ('train', 'validation', 'test'))
  sep = b'\x00'    # the pieces of a held-out split, joined by a byte no text contains
  validation = sep.join(unshared_pieces(validation, [train]))
  test = sep.join(unshared_pieces(test, [train, validation]))
  return {'train': train, 'validation': validation, 'test': test}


def corpus_digest(corpus: dict[str, bytes]) -> str:
  h = hashlib.sha256()
  for name in ('train', 'validation', 'test'):
    h.update(name.encode() + len(corpus[name]).to_bytes(8, 'little') + corpus[name])
  return h.hexdigest()


def cached_docs_corpus() -> dict[str, bytes]:
  """`docs_corpus`, from a cache file beside the compilation cache once built; refused when its
  checksum is not the one of the pinned install."""
  import numpy
  import scipy
  versions = f'numpy{numpy.__version__}-scipy{scipy.__version__}'
  folder = os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'),
                        'normlab', 'data')
  path = os.path.join(folder, f'docs_text-{versions}.npz')
  corpus = None
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        corpus = {k: f[k].tobytes() for k in ('train', 'validation', 'test')}
    except (OSError, ValueError, KeyError):
      corpus = None
  if corpus is None:
    corpus = docs_corpus()
    os.makedirs(folder, exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp.npz'
    np.savez(tmp, **{k: np.frombuffer(v, np.uint8) for k, v in corpus.items()})
    os.replace(tmp, path)
  digest = corpus_digest(corpus)
  if DOCS_SHA256 is not None and digest != DOCS_SHA256:
    raise ConfigError(
        f'docs_text differs from the corpus the findings used (sha256 {digest[:12]}... not '
        f'{DOCS_SHA256[:12]}...): it is built from the installed {versions.replace("-", ", ")}; '
        'install the versions requirements.txt pins (pip install -r requirements.txt)')
  return corpus


def _token_windows(data: bytes, t: int, stride: int) -> ArraySplit:
  """LM windows of the pieces of `data` between \\x00 separators (none crosses one)."""
  as_tokens = lambda b: np.frombuffer(b, np.uint8).astype(np.int32) + 1
  pieces = [lm_windows(as_tokens(seg), t, stride) for seg in data.split(b'\x00')
            if len(seg) > t + 1]
  return ArraySplit({k: np.concatenate([p.arrays[k] for p in pieces]) for k in pieces[0].arrays})


def load_docs_text(data_config) -> Dataset:
  corpus = cached_docs_corpus()
  t = data_config.seq_length
  return Dataset(train=_token_windows(corpus['train'], t, t // 2),
                 validation=_token_windows(corpus['validation'], t, t),
                 test=_token_windows(corpus['test'], t, t),
                 num_classes=BYTE_VOCAB, input_shape=(t,), task='language_model',
                 kind='tokens', vocab_size=BYTE_VOCAB)


def training_bytes(name: str) -> bytes:
  """The training text of an offline corpus, for statistics of the corpus itself (entropies
  the claims' targets are fixed from before any run)."""
  if name == 'docs_text':
    return cached_docs_corpus()['train']
  if name == 'tiny_text':
    raw = _descr_text().encode('utf-8')
    return raw[:int(0.9 * len(raw))]
  raise ConfigError(f'no offline training text for {name!r}; valid: docs_text, tiny_text')


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
