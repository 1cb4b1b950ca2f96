"""TensorBoard event files, written and rewritten without TensorFlow."""

from __future__ import annotations

import glob
import os
import socket
import time

from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboardX import summary as tbx_summary


SESSION_START_TAG = '_hparams_/session_start_info'   # the HParams plugin's "a run began"


def _events(path: str):
  """(raw record, parsed Event) of an event file, as written: no conversion (TensorBoard's
  EventFileLoader turns legacy scalars into tensor summaries, and writing those back would make
  every reader that asks for scalars lose them)."""
  for record in RawEventFileLoader(path).Load():
    yield record, event_pb2.Event.FromString(record)


def _tags(event) -> list[str]:
  return [v.tag for v in event.summary.value] if event.HasField('summary') else []


def drop_events_from(logdir: str, step: int, kept_at_step: tuple[str, ...] = ()) -> int:
  """Rewrites `logdir`'s event files without the summaries a run resumed at `step` logs again:
  every one after `step`, and those at `step` itself except the tags starting with one of
  `kept_at_step` (logged before the checkpoint at `step` was written).

  A run killed after its last checkpoint has logged points the resumed run will log again.
  TensorBoard's purge of such "orphaned" points (SessionLog.START) is honoured by the legacy
  Python reader but not by every reader (the Rust data server TensorBoard uses by default), so
  we remove them from the files themselves: every reader then shows one clean curve. Records
  are copied byte for byte. Returns the number of events dropped.
  """
  def kept(event) -> bool:
    if not event.HasField('summary') or event.step < step:
      return True
    return event.step == step and all(t.startswith(kept_at_step) for t in _tags(event))

  dropped = 0
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    records = list(_events(path))
    keep = [record for record, event in records if kept(event)]
    if len(keep) == len(records):
      continue
    dropped += len(records) - len(keep)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
      writer = RecordWriter(f)
      for record in keep:
        writer.write(record)
      writer.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  return dropped


def has_session_start(logdir: str) -> bool:
  return any(SESSION_START_TAG in _tags(event)
             for path in glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))
             for _, event in _events(path))


def read_scalars(logdir: str, prefix: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the scalars under `prefix/` in `logdir`'s event files."""
  out = {}
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    for _, event in _events(path):
      for v in event.summary.value if event.HasField('summary') else []:
        if v.tag.startswith(prefix + '/') and v.HasField('simple_value'):
          out.setdefault(v.tag, {})[event.step] = v.simple_value
  return out


class MetricWriter:
  """Scalars under `workdir`, tagged `<prefix>/<name>` (e.g. train/loss, eval/accuracy).

  Each event goes to its file in one unbuffered write as it is logged (logging happens every
  few dozen steps): a killed process loses nothing it logged and never leaves half a record,
  and no background thread holds events back. (tensorboardX's SummaryWriter queues events for a
  thread, and its flush() does not wait for that queue.) `flush` makes them durable (fsync).
  tensorboardX only builds the image and HParams protos. On processes other than 0 (multi-host),
  nothing is written.
  """

  def __init__(self, logdir: str, resume_step: int | None = None,
               kept_at_step: tuple[str, ...] = ()):
    """resume_step: a run (re)starting at this step: what it logs again is first dropped from
    the files (`drop_events_from`; at 0, every summary). None: add to the files as they are."""
    from training.workdir import is_primary
    self.logdir, self._file = logdir, None
    if not is_primary():   # multi-host: one process writes the curves
      return
    if resume_step is not None:
      drop_events_from(logdir, resume_step, kept_at_step)
    # unique per process and start: never appends to another process's file
    name = (f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.'
            f'{time.time_ns()}')
    self._file = open(os.path.join(logdir, name), 'xb', buffering=0)
    self._records = RecordWriter(self._file)
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event) -> None:
    if self._file is not None:
      self._records.write(event.SerializeToString())

  def _summary(self, step: int, summary) -> None:
    """`summary`: a Summary proto (tensorboard's, or tensorboardX's: the same wire format)."""
    self._write(event_pb2.Event(wall_time=time.time(), step=step,
                                summary=summary_pb2.Summary.FromString(
                                    summary.SerializeToString())))

  def scalars(self, step: int, prefix: str, values: dict[str, float]) -> None:
    self._summary(step, summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=f'{prefix}/{name}', simple_value=float(value))
        for name, value in values.items()]))

  def image(self, step: int, tag: str, image_hwc) -> None:
    self._summary(step, tbx_summary.image(tag, image_hwc, dataformats='HWC'))

  def hparams(self, values: dict, metric_tags: list[str]) -> None:
    """TensorBoard HParams plugin: this run's hyperparameters, and which scalar tags are its
    metrics (their last values are the run's final metrics in the HParams table)."""
    exp, session_start, _ = self._hparams(values, metric_tags)   # the end: `end_session`
    self._summary(0, exp)
    self._summary(0, session_start)

  def end_session(self, values: dict, metric_tags: list[str]) -> None:
    self._summary(0, self._hparams(values, metric_tags)[2])

  @staticmethod
  def _hparams(values: dict, metric_tags: list[str]):
    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
              for k, v in values.items()}
    return tbx_summary.hparams(values, {t: 0.0 for t in metric_tags})

  def flush(self) -> None:
    if self._file is not None:
      os.fsync(self._file.fileno())

  def close(self) -> None:
    if self._file is not None:
      self.flush()
      self._file.close()
      self._file = None
