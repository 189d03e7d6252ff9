"""`fewstep generate`, `fewstep parity`, `fewstep batch`, `fewstep info` and `fewstep recipes`: few-step sampling from
the command line.

One module per command (generate.py, parity.py, batch.py, info.py, recipes.py); the flags they share live in common.py
(model and sampler), loras.py (--lora), adapters.py (ControlNet, T2I-Adapter, IP-Adapter, motion),
control_images.py (--canny / --depth), settings.py (--settings / --save-settings), outputs.py (files,
grids) and logs.py (--quiet / --verbose: what is printed, and the libraries' chatter kept out). Importing
the package imports no framework: every command imports what it uses when it runs.
"""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
from typing import List, Optional

from fewstep.cli import batch, generate, info, logs, parity, recipes

_COMMANDS = {"generate": generate, "parity": parity, "batch": batch, "info": info, "recipes": recipes}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewstep", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _COMMANDS.values():
        module.add_parser(sub)
    for command in sub.choices.values():
        logs.add_flags(command)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; every failure ends in one line on stderr that says what to do and a non-zero exit
    (2: the input, 1: the machine or a bug, 130: interrupted), the traceback only with --verbose."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    verbose = logs.level_of(args) == "verbose"
    with logs.command_output(logs.level_of(args)):  # the libraries' chatter held back (see logs.py)
        try:
            # which flags were typed: they override a --settings file, and a recipe's steps / guidance / eta
            given = generate.parse_given(build_parser(), argv) if args.command == "generate" else ()
            return _COMMANDS[args.command].run(args, given)
        except KeyboardInterrupt:
            # what was finished is on disk (files are written whole or not at all); a batch resumes from it
            print("fewstep: error: interrupted (Ctrl-C); nothing half-written was left, and a batch resumes where it "
                  "stopped.", file=sys.stderr)
            return 130
        except BaseException as err:  # noqa: BLE001 - every failure becomes one line
            if isinstance(err, SystemExit):
                raise
            if verbose:
                traceback.print_exc()
            code, line = failure_line(err)
            print(f"fewstep: error: {line}", file=sys.stderr)
            return code


def failure_line(err: BaseException):
    """(exit status, one line) for an exception: the input's fault (2) with its own message, else what the
    machine said (1) with what to try."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return 2, text  # JobError, LoraError and the pipelines' argument checks are ValueErrors
    if isinstance(err, RecursionError):
        return 2, "an input file is nested too deeply to read (a JSON settings file, LoRA or checkpoint header?)."
    if isinstance(err, MemoryError):
        return 1, "out of memory: use a smaller size, fewer images per call, or float16."
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return 1, f"no space left on the device ({text}); free some space or write to another folder."
    if isinstance(err, OSError) and err.errno == errno.ENAMETOOLONG:
        return 2, f"a file name is too long for the file system ({text}); use a shorter name."
    if isinstance(err, OSError):
        return 1, f"{text} (an operating-system error; check the path and its permissions)."
    return 1, f"{type(err).__name__}: {text} (unexpected; run again with --verbose for the traceback)."


if __name__ == "__main__":
    sys.exit(main())
