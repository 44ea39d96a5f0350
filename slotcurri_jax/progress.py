"""Progress bars on stderr that keep log lines readable above them.

Used by the library's long loops (training, evaluation); defines no flags.
"""
from __future__ import annotations

import contextlib
import shutil
import sys

from absl import logging
from tqdm import tqdm


class _BarSafeStream:
  """A stream for absl's log handler that prints above the progress bars (tqdm.write)."""

  def write(self, text: str) -> None:
    tqdm.write(text, file=sys.stderr, end='')

  def flush(self) -> None:
    sys.stderr.flush()


@contextlib.contextmanager
def progress_bar(total: int | None, initial: int = 0, desc: str = '', unit: str = 'step',
                 enabled: bool = True):
  """A tqdm bar on stderr (rate and ETA from its updates), with log lines printed above it.

  Off a terminal (logs to a file) it refreshes every 30 s instead of several times a second.
  """
  tty = sys.stderr.isatty()
  # shutil falls back to $COLUMNS/$LINES or 100x20 where a terminal reports 0x0 (a bare
  # pty), in which tqdm would hide the bar.
  size = shutil.get_terminal_size((100, 20))
  bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled,
             file=sys.stderr, mininterval=0.5 if tty else 30.0, smoothing=0.1,
             ncols=size.columns if tty else None, nrows=size.lines if tty else None)
  handler = logging.get_absl_handler().python_handler
  previous = handler.stream
  if enabled:
    handler.stream = _BarSafeStream()
  try:
    yield bar
  finally:
    handler.stream = previous
    bar.close()
