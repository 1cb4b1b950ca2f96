"""TensorBoard logging through tensorboardX (works without TensorFlow installed)."""

from __future__ import annotations

import glob
import os
import time

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams as hparams_summaries


def drop_events_after(logdir: str, step: int) -> int:
  """Rewrites `logdir`'s event files without the summaries logged after `step`.

  A run killed after its last checkpoint has logged points the resumed run will log again.
  TensorBoard's purge of such "orphaned" points (SessionLog.START) is honoured by the legacy
  Python reader but not by every reader (the Rust data server TensorBoard uses by default), so
  we remove them from the files themselves: every reader then shows one clean curve.
  Returns the number of events dropped.
  """
  dropped = 0
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    events = list(EventFileLoader(path).Load())
    keep = [e for e in events if not (e.HasField('summary') and e.step > step)]
    if len(keep) == len(events):
      continue
    dropped += len(events) - len(keep)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
      writer = RecordWriter(f)
      for event in keep:
        writer.write(event.SerializeToString())
      writer.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  return dropped


class _NullWriter:
  """What MetricWriter writes to on processes other than 0: nothing."""

  def __getattr__(self, name):
    return self

  def __call__(self, *args, **kwargs):
    return None


class MetricWriter:
  """Scalars under `workdir`, tagged `<prefix>/<name>` (e.g. train/loss, eval/accuracy)."""

  def __init__(self, logdir: str, resume_step: int = 0):
    from training.workdir import is_primary
    if not is_primary():   # multi-host: one process writes the curves
      self._writer = _NullWriter()
      return
    if resume_step:
      drop_events_after(logdir, resume_step)
    # A unique suffix: tensorboardX names files by the second and would overwrite the file of a
    # process that died in the same second.
    self._writer = SummaryWriter(logdir=logdir, flush_secs=10,
                                 filename_suffix=f'.{os.getpid()}.{time.time_ns()}')

  def scalars(self, step: int, prefix: str, values: dict[str, float]) -> None:
    for name, value in values.items():
      self._writer.add_scalar(f'{prefix}/{name}', value, global_step=step)

  def image(self, step: int, tag: str, image_hwc) -> None:
    self._writer.add_image(tag, image_hwc, global_step=step, dataformats='HWC')

  def hparams(self, values: dict, metric_tags: list[str]) -> None:
    """TensorBoard HParams plugin: this run's hyperparameters, and which scalar tags are its
    metrics (their last values are the run's final metrics in the HParams table)."""
    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
              for k, v in values.items()}
    exp, session_start, session_end = hparams_summaries(values, {t: 0.0 for t in metric_tags})
    del session_end  # written by `end_session`
    self._writer.file_writer.add_summary(exp)
    self._writer.file_writer.add_summary(session_start)

  def end_session(self, values: dict, metric_tags: list[str]) -> None:
    _, _, session_end = hparams_summaries(values, {t: 0.0 for t in metric_tags})
    self._writer.file_writer.add_summary(session_end)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
