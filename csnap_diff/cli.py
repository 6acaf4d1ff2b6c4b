"""What the four diff tools share: exit codes, error reporting, output and input files.

Exit codes (every tool): 0 done; 1 server or I/O error; 2 usage; 3 cannot connect;
4 wrong device (the origin or store is not the server's); 5 refused: the target is not in
the diff's from state, or the stream is damaged, truncated or not the expected one
(nothing past the last verified record was applied).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

from csnap_client.protocol import ProtocolError, RemoteError, WrongDeviceError

from .export import DiffSourceError
from .ingest import ReceiveError
from .rbd import DiffFormatError
from .remote import FromStateError
from .state import TokenError
from .stream import StreamError
from .targets import TargetError

EXIT_OK, EXIT_SERVER, EXIT_USAGE, EXIT_CONNECT, EXIT_WRONG_DEVICE, EXIT_REFUSED = range(6)
EPILOG = ("Exit codes: 0 done, 1 server or I/O error, 2 usage, 3 cannot connect, 4 wrong "
          "device, 5 refused (from state does not match, or a damaged or unexpected diff).")


def say(prog: str, text: str) -> None:
    """One message on stderr, prefixed by the tool's name."""
    print(f"{prog}: {text}", file=sys.stderr)


def run(prog: str, main: Callable[[], Awaitable[Any]], server: str = "") -> int:
    """Run ``main()`` on a fresh event loop and turn what it raises into an exit code."""
    try:
        asyncio.run(main())
    except ReceiveError as exc:
        say(prog, str(exc))
        if exc.progress is not None and exc.progress.position:
            say(prog, f"resume with: csnap-send --resume {exc.progress.token()}")
        return EXIT_REFUSED
    except (FromStateError, StreamError, DiffFormatError, TokenError) as exc:
        say(prog, f"refused: {exc}")
        return EXIT_REFUSED
    except (ValueError, DiffSourceError, TargetError) as exc:
        say(prog, str(exc))
        return EXIT_USAGE
    except WrongDeviceError as exc:
        say(prog, exc.message)
        return EXIT_WRONG_DEVICE
    except (RemoteError, ProtocolError) as exc:
        say(prog, f"server error: {exc}")
        return EXIT_SERVER
    except ConnectionRefusedError as exc:
        say(prog, f"cannot connect to {server}: {exc.strerror or exc}")
        return EXIT_CONNECT
    except (ConnectionError, TimeoutError) as exc:
        say(prog, f"connection to {server} failed: {exc}")
        return EXIT_CONNECT
    except BrokenPipeError:
        say(prog, "the output was closed before the diff was complete")
        return EXIT_SERVER
    except OSError as exc:
        say(prog, f"I/O error: {exc}")
        return EXIT_SERVER
    except KeyboardInterrupt:
        say(prog, "interrupted")
        return 130
    return EXIT_OK


def output_fd(path: str) -> int:
    """A file descriptor to write a diff to: ``-`` is stdout (refused on a terminal)."""
    if path == "-":
        if os.isatty(1):
            raise ValueError("refusing to write a binary diff to a terminal: use --output FILE "
                             "or a pipe")
        return 1
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def input_file(path: str) -> BinaryIO:
    """A binary file to read a diff from: ``-`` is stdin."""
    if path == "-":
        return os.fdopen(os.dup(0), "rb", buffering=1 << 20)
    return open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by the caller
