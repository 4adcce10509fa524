"""One error type for bad input data, with the file, line and field it concerns.

Every command-line tool of `input_pipelines` prints a `DataError` as a single line
(``error: <file>, line <n>, field '<name>': <what is wrong>``) and exits with status 2, without a
traceback and without leaving partial output.
"""

from __future__ import annotations

import sys


class DataError(ValueError):
  """Bad input data.

  Args:
    file: the offending file (or a short description of the input).
    message: what is wrong, and where possible how to fix it.
    line: 1-based line number in `file` (or data row number, see `line_label`).
    field: column / field name.
    line_label: "line" for text files, "row" for Parquet / `.npy` rows.
  """

  def __init__(
    self,
    file,
    message: str,
    line: int | None = None,
    field: str | None = None,
    line_label: str = "line",
  ):
    self.file, self.line, self.field, self.message = str(file), line, field, message
    self.line_label = line_label
    where = [self.file]
    if line is not None:
      where.append(f"{line_label} {line}")
    if field is not None:
      where.append(f"field '{field}'")
    super().__init__(", ".join(where) + ": " + message)

  def __reduce__(self):  # picklable (a parallel run sends errors between processes)
    args = (self.file, self.message, self.line, self.field, self.line_label)
    return (DataError, args, dict(self.__dict__))


# Errors a command-line tool reports as one line (everything else is a bug: full traceback).
USER_ERRORS = (
  DataError,
  ValueError,
  FileNotFoundError,
  FileExistsError,
  NotADirectoryError,
  IsADirectoryError,
  PermissionError,
)


def run_cli(main, argv=None) -> int:
  """Runs `main(argv)`; prints user errors as one line on stderr and returns exit status 2."""
  try:
    return int(main(argv) or 0)
  except USER_ERRORS as err:
    msg = str(err)
    if (
      isinstance(err, (FileNotFoundError, FileExistsError))
      and err.filename
      and str(err.filename) not in msg
    ):
      msg = f"{err.filename}: {err.strerror or msg}"
    print(f"error: {msg}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted; no output written", file=sys.stderr)
    return 130
