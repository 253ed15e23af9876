"""User errors at the command line: one line on stderr and a non-zero exit, never a traceback.

The entry points run their one library call inside ``user_errors()``. A bad flag value, gin binding, workdir,
checkpoint or data file raises one of ``USER_ERRORS`` somewhere below; here it becomes
``error: <binding or file>: <what is wrong, what is allowed>``. ``LOPT_TRACEBACK=1`` re-raises it with its traceback
(for debugging lopt itself).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

# ValueError covers lopt's ArgumentError, ConfigError and CheckpointError; KeyError the registry's unknown names;
# TypeError a gin binding of the wrong kind (a missing required argument); OSError unreadable or unwritable paths;
# ImportError a missing optional extra.
USER_ERRORS = (ValueError, KeyError, TypeError, OSError, ImportError)
EXIT_CODE = 2


def one_line(error: BaseException) -> str:
  """The message of ``error`` without gin's "In call to configurable ..." context lines."""
  lines = [line for line in str(error).splitlines() if not line.strip().startswith("In call to configurable")]
  text = " ".join(line.strip() for line in lines if line.strip())
  return text or type(error).__name__


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
  """Turns a user error raised in the block into ``error: <message>`` on stderr and exit code 2."""
  try:
    yield
  except USER_ERRORS as e:
    if os.environ.get("LOPT_TRACEBACK"):
      raise
    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_CODE)
