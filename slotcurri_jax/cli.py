"""What the command-line programs share: user errors as one message, quiet library logs.

A *user error* is a problem with the user's input (a config key or value, missing
data or weights, a bad checkpoint or video): `run` prints its message alone on
stderr and exits with status 1, no traceback. `--debug` (or SLOTCURRI_DEBUG=1)
shows the traceback too. Any other exception is an internal error and keeps its
traceback.

The library marks an error as the user's through `slotcurri_jax.errors` (which
imports nothing of the command line); this module is for the front doors only and
defines the absl `--debug` flag when imported.

Library chatter: INFO lines that absl logging receives from outside slotcurri_jax
(orbax, TFDS, etils) and TensorFlow's C++ INFO/WARNING lines are hidden unless
--verbosity >= 1 (absl's own flag, `-v 1`).
"""
from __future__ import annotations

import logging as py_logging
import os
import pathlib
import re
import sys
import tempfile
import textwrap
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from slotcurri_jax import config as config_lib
from slotcurri_jax.errors import UserError, is_user_error, message

DEBUG_ENV = 'SLOTCURRI_DEBUG'
# Exit status of a run that was interrupted (SIGTERM, Ctrl-C) and saved a checkpoint:
# sysexits' EX_TEMPFAIL, "try again later". The launch scripts requeue or rerun on it.
EXIT_INTERRUPTED = 75
HELP_FLAGS = ('--help', '-?', '-h', '--helpshort', '--helpfull')
_PACKAGE_DIR = str(pathlib.Path(__file__).resolve().parent)
_DEBUG = flags.DEFINE_bool('debug', False, 'Show the traceback of user errors too '
                           f'(or set {DEBUG_ENV}=1).')


def _debug_requested(argv: list[str] | None = None) -> bool:
  if os.environ.get(DEBUG_ENV, '') not in ('', '0'):
    return True
  if flags.FLAGS.is_parsed():
    return _DEBUG.value
  return any(a in ('--debug', '--debug=true', '--debug=True') for a in (argv or sys.argv))


def fail(text: str, status: int = 1) -> None:
  """Print `error: text` on stderr and exit with `status`."""
  sys.stderr.flush()
  print(f'error: {text}', file=sys.stderr, flush=True)
  sys.exit(status)


# --------------------------------------------------------------------------- flag parsing

def _chain(error: BaseException) -> list[BaseException]:
  """error, then what caused it, then what caused that, ..."""
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def _without_traceback(text: str) -> str:
  """Replace a traceback quoted inside a message by its last line (the error itself)."""
  head, sep, tail = text.partition('Traceback (most recent call last):')
  if not sep:
    return text
  lines = [l for l in tail.splitlines() if l.strip() and not l.startswith(' ')]
  return f'{head.strip()} {lines[-1].strip() if lines else ""}'.strip()


def describe_config_error(error: BaseException) -> str:
  """A config file that failed to load (ml_collections reports it on first access)."""
  text = message(error)
  path = re.search(r'Attempted \[.*?\]:\s*\n\s*(\S+)\s*\n\s*(.+)', text)
  if path:
    return f'config file {path.group(1)} cannot be loaded: {path.group(2).strip()}'
  return _without_traceback(text.replace('Configuration is not available because of an '
                                         'earlier failure to load: ', ''))


def describe_flag_error(error: BaseException, argv: list[str]) -> str:
  """One message for a failure while parsing flags (config file, overrides)."""
  for e in _chain(error):
    text = _without_traceback(message(e))
    text = re.sub(r"^'+|'+$", '', text.replace("\\'", "'").replace('\\n', '\n'))
    suggestion = re.search(r"'?(\w+)'?\s*\nDid you mean \"(\w+)\" instead of \"\w+\"\?", text)
    if suggestion:
      wrong, right = suggestion.groups()
      given = next((a for a in argv if re.search(rf'\.{wrong}(=|$)', a)), f'.{wrong}')
      return (f'unknown config key {wrong!r} in {given}: did you mean {right!r}? '
              '(every key is declared in slotcurri_jax/config.py)')
  # The innermost non-empty message names the problem (e.g. an unknown variant);
  # flags' own errors ("flag --x=y: ...") name the flag and are kept whole.
  for e in _chain(error):
    if isinstance(e, flags.Error) and message(e) not in ('', type(e).__name__):
      return _without_traceback(message(e))
  for e in reversed(_chain(error)):
    text = _without_traceback(message(e))
    if text and text != type(e).__name__:
      return text
  return f'bad command line: {type(error).__name__}'


def _parse_flags(argv: list[str]) -> list[str]:
  if any(a in HELP_FLAGS for a in argv[1:]):
    show_help(argv)
  removed = config_lib.removed_in_overrides(argv)  # a removed key: name its replacement
  if removed:
    fail(removed)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # config files and overrides raise many types
    if _debug_requested(argv):
      raise
    fail(describe_flag_error(e, argv) + '\n(see --helpshort for the flags)')


def config_value(config_flag):
  """The ConfigDict of a config_flags flag; a file that failed to load is a user error."""
  config = config_flag.value
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/demo.py')
  try:
    config.get('method')  # ml_collections raises here for a file that did not load
  except OSError as e:
    raise UserError(describe_config_error(e)) from e
  return config_lib.check_removed(config)


def check_writable(path: str, what: str) -> None:
  """Raise a user error unless directory `path` can be written (created if missing): a
  temporary file is made, and removed, in it or in its nearest existing parent. Remote
  paths (gs://...) are not checked here."""
  if '://' in str(path):
    return
  existing = pathlib.Path(os.path.expanduser(str(path))).absolute()
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  try:
    if not existing.is_dir():
      raise NotADirectoryError(20, f'{existing} is a file, not a directory')
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise UserError(f'{what} {path} is not writable: {e.strerror or e} (tried {existing})') from e


# --------------------------------------------------------------------------- --help

# The keys --help shows with their values (every key: slotcurri_jax/config.py).
MAIN_KEYS = ('method', 'seed', 'data.name', 'data.data_dir', 'data.resolution',
             'data.batch_size', 'model.encoder.kind', 'model.encoder.weights',
             'model.max_slots', 'model.slot_dim', 'curriculum.enabled', 'curriculum.schedule',
             'ssync.enabled', 'train.steps', 'train.learning_rate',
             'train.checkpoint_every_steps', 'train.eval_every_steps', 'eval.rollout',
             'model.compute_dtype', 'train.active_slots_only', 'mesh.fsdp')


def config_help(spec: str | None) -> str:
  """What --help says about configs: the variants and main keys of config file `spec`
  (file[:variant]), or the config files under configs/ when none is given."""
  lines = ['Config: --config=FILE[:VARIANT] picks a config file and a method variant '
           f'({" | ".join(config_lib.VARIANTS)}); --config.KEY=VALUE overrides any key, e.g. '
           '--config.train.steps=1000 --config.model.encoder.dtype=bfloat16 (every key and '
           'its meaning: slotcurri_jax/config.py).']
  if not spec:
    configs = sorted(pathlib.Path('configs').glob('*.py')) or sorted(
        (pathlib.Path(_PACKAGE_DIR).parent / 'configs').glob('*.py'))
    lines.append('Config files (give one with --help to see its keys):')
    for path in configs:
      doc = (re.search(r'"""(.*)', path.read_text()) or [None, ''])[1]
      lines.append(f'  {path}[:{"|".join(config_lib.VARIANTS)}]  {doc.strip()}')
    return '\n'.join(_wrapped(lines[:1]) + lines[1:])
  try:
    config = config_lib.load(spec)
  except Exception as e:  # a config file that does not load: say so, keep the rest of the help
    return '\n'.join(_wrapped(lines) + [f'{spec} cannot be loaded: {message(e)}'])
  lines.append(f'Main keys of {spec} (value: what this config sets):')
  for key in MAIN_KEYS:
    value = config
    for part in key.split('.'):
      value = value[part]
    lines.append(f'  --config.{key}={value!r}')
  return '\n'.join(_wrapped(lines[:1]) + lines[1:])


def _wrapped(lines: list[str]) -> list[str]:
  return [w for line in lines for w in textwrap.wrap(line, 88, subsequent_indent='  ')]


def show_help(argv: list[str]) -> None:
  """--help: the program's flags, then the config's variants and main keys; exit 0."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  app.usage(shorthelp='--helpfull' not in argv, writeto_stdout=True)
  print()
  print(config_help(spec))
  sys.exit(0)


# --------------------------------------------------------------------------- running

# The training metrics line ("[50] loss_total=...") is logged by clu's LoggingWriter.
_METRIC_LINES = f'{os.sep}clu{os.sep}metric_writers{os.sep}'
# Libraries whose warnings are internal notes (deprecations, metadata files), not the user's.
_CHATTY = tuple(f'{os.sep}{name}{os.sep}' for name in
                ('orbax', 'etils', 'tensorflow', 'tensorflow_datasets'))


class _QuietLibraries(py_logging.Filter):
  """Unless --verbosity >= 1, drops INFO records from outside slotcurri_jax and the
  WARNING records of the checkpoint and data libraries (_CHATTY)."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if (record.levelno >= py_logging.ERROR or logging.get_verbosity() >= 1
        or record.pathname.startswith(_PACKAGE_DIR)):
      return True
    if _METRIC_LINES in record.pathname:  # scalars yes; the hparams dump and image notes no
      return bool(re.match(r'\[\d+\] [\w/.]+=', record.getMessage()))
    return record.levelno >= py_logging.WARNING and not any(
        part in record.pathname for part in _CHATTY)


def quiet_libraries() -> None:
  """Hide library chatter unless --verbosity >= 1 (call after flag parsing, before TF loads).

  TensorFlow 2.21 prints its C++ start-up lines (oneDNN, absl::InitializeLog) while it
  is imported, whatever TF_CPP_MIN_LOG_LEVEL says, so it is imported here with file
  descriptor 2 pointed at /dev/null; Python errors of the import still propagate.
  """
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
  if logging.get_verbosity() >= 1 or 'tensorflow' in sys.modules:
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, 'w') as null:
      os.dup2(null.fileno(), 2)
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def run(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
  """absl's app.run(main) with user errors printed as one message (see module doc)."""
  argv = list(sys.argv if argv is None else argv)
  sys.argv = argv  # ml_collections' config flag reads its overrides from sys.argv

  def wrapped(args):
    quiet_libraries()
    try:
      return main(args)
    except app.UsageError as e:
      if _debug_requested():
        raise
      fail(f'{message(e)} (see --helpshort)')
    except KeyboardInterrupt:
      if _debug_requested():
        raise
      fail('interrupted (a second Ctrl-C): exited at once, without saving', status=130)
    except BaseException as e:  # SystemExit passes: it is not marked
      if not is_user_error(e) or _debug_requested():
        raise
      fail(message(e))

  app.run(wrapped, argv=argv, flags_parser=_parse_flags)
