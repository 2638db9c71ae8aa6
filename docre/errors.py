"""The one exception type for problems in what the user gave us (files, configs, arguments).

Command-line entry points catch `DocreError` and print its message as a single line, with no
traceback; anything else is a bug in docre and keeps its traceback.
"""

import sys
from collections.abc import Callable


class DocreError(Exception):
    """A user-facing error. The message names the file, document and field where it applies.
    `exit_status` is the CLI's exit status (1; an interrupted training run uses 128 + signal)."""

    exit_status = 1


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a CLI `main()` and turn a `DocreError` into `error: <message>` on stderr and its exit
    status (1); Ctrl-C outside a training loop prints one line too (exit status 130). Errors only:
    a command that needs process-wide settings (huge pages, docre/allocator.py) makes them itself,
    first thing in its `main()`."""
    try:
        status = main()
    except DocreError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_status)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
