"""`fewstep generate`, `fewstep parity`, `fewstep batch` and `fewstep info`: few-step sampling from the command line.

One module per command (generate.py, parity.py, batch.py, info.py); the flags they share live in common.py
(model and sampler), loras.py (--lora), adapters.py (ControlNet, T2I-Adapter, IP-Adapter, motion),
control_images.py (--canny / --depth), settings.py (--settings / --save-settings), outputs.py (files,
grids) and logs.py (--quiet / --verbose: what is printed, and the libraries' chatter kept out). Importing
the package imports no framework: every command imports what it uses when it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from fewstep.cli import batch, generate, info, logs, parity

_COMMANDS = {"generate": generate, "parity": parity, "batch": batch, "info": info}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewstep", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _COMMANDS.values():
        module.add_parser(sub)
    for command in sub.choices.values():
        logs.add_flags(command)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    with logs.command_output(logs.level_of(args)):  # the libraries' chatter held back (see logs.py)
        try:
            # which flags were typed matters only when they override a --settings file
            given = generate.parse_given(build_parser(), argv) if getattr(args, "settings", None) else ()
            return _COMMANDS[args.command].run(args, given)
        except (ValueError, FileNotFoundError) as err:  # JobError and LoraError are ValueErrors
            print(f"fewstep: error: {err}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
