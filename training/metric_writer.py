"""TensorBoard logging through tensorboardX (works without TensorFlow installed)."""

from __future__ import annotations

from tensorboardX import SummaryWriter


class MetricWriter:
  """Scalars under `workdir`, tagged `<prefix>/<name>` (e.g. train/loss, eval/accuracy)."""

  def __init__(self, logdir: str, purge_step: int | None = None):
    # purge_step: on resume, TensorBoard discards points at or after this step that an earlier
    # (killed) process wrote, so curves have no duplicated or out-of-order points.
    self._writer = SummaryWriter(logdir=logdir, purge_step=purge_step, flush_secs=10)

  def scalars(self, step: int, prefix: str, values: dict[str, float]) -> None:
    for name, value in values.items():
      self._writer.add_scalar(f'{prefix}/{name}', value, global_step=step)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
