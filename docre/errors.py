"""The one exception type for problems in what the user gave us (files, configs, arguments).

Command-line entry points catch `DocreError` and print its message as a single line, with no
traceback; anything else is a bug in docre and keeps its traceback.
"""

import difflib
import sys
from collections.abc import Callable, Iterable


class DocreError(Exception):
    """A user-facing error. The message names the file, document and field where it applies.
    `exit_status` is the CLI's exit status (1; an interrupted training run uses 128 + signal)."""

    exit_status = 1


def hub_errors() -> tuple[type[Exception], ...]:
    """What huggingface_hub raises when the Hub refuses, cannot be reached or is switched off, as
    families rather than class names, which move between its versions: its own HTTP and id errors,
    OSError (its offline mode, the cache, requests-era connection errors) and the whole error tree of
    the HTTP client it is built on (requests, httpx or httpx2 by version; httpx's ConnectError is no
    OSError), found as the client's root class among HfHubHTTPError's ancestors."""
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    client = [cls for cls in HfHubHTTPError.__mro__ if cls.__module__.split(".")[0] not in ("huggingface_hub", "builtins")]
    return (HfHubHTTPError, HFValidationError, OSError, *client[-1:])


def hub_error_line(error: Exception) -> str:
    """One of `hub_errors()` as one line: the library's first line; for an error of the HTTP client
    itself (no answer from the Hub) also where the Hub was looked for and what went wrong."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, (HfHubHTTPError, HFValidationError, OSError)):
        return first_line
    return f"the Hub at {constants.ENDPOINT} could not be reached ({type(error).__name__}: {first_line})"


def did_you_mean(word, choices: Iterable[str]) -> str:
    """' (did you mean X?)' with the choice closest to a misspelt `word`, or '' if none is close."""
    hint = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {hint[0]}?)" if hint else ""


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
