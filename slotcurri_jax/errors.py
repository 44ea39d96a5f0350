"""User errors: the library's way of saying "this is the user's input, not a bug".

A *user error* is a problem with the user's input (a config key or value, missing data
or weights, a bad checkpoint or video). Library code marks an error as the user's by
raising `UserError`, or by raising any exception inside `with user_errors(...)`, which
marks exceptions of the given types (keeping their type, so callers that catch
ValueError still do). The front doors (`main`, `infer`, the tools; through
`slotcurri_jax.cli.run`) print a user error as one line, without a traceback; any
other exception is an internal error and keeps its traceback.

This module imports nothing of absl, jax or the command line, so a notebook or another
program can import the library without registering flags.
"""
from __future__ import annotations

import contextlib
import re
from typing import Iterator


class UserError(ValueError):
  """A problem with the user's input; the message names it and the fix."""


def mark(error: BaseException) -> BaseException:
  """Mark `error` as a user error (returns it, for `raise mark(ValueError(...))`)."""
  error.slotcurri_user_error = True
  return error


def is_user_error(error: BaseException) -> bool:
  return isinstance(error, UserError) or getattr(error, 'slotcurri_user_error', False)


@contextlib.contextmanager
def user_errors(*types: type[BaseException], match: str | None = None) -> Iterator[None]:
  """Exceptions of `types` raised inside are the user's (their type is kept); with
  `match`, only those whose message matches that regex (the rest stay internal)."""
  types = types or (ValueError, FileNotFoundError, NotADirectoryError, ImportError)
  try:
    yield
  except types as e:
    if match is None or re.search(match, message(e)):
      mark(e)
    raise


def message(error: BaseException) -> str:
  """The text of an exception without its type (KeyError's quotes removed)."""
  if len(error.args) == 1 and isinstance(error.args[0], str):
    text = error.args[0]
  else:
    text = str(error)
  return text.strip() or type(error).__name__
