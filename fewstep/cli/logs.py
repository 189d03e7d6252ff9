"""What the command line prints, and what it lets through of the libraries it drives.

torch, diffusers, transformers, MindSpore and mindone talk while they import and load: MindSpore logs
deprecations of its own modules, mindone's port of transformers prints "Config not found" lines and
warns about its own arguments, transformers logs advice. None of it is about the user's command, so
the CLI keeps it out of its output unless `--verbose` asks for it; `--quiet` also drops fewstep's own
lines and progress bars, leaving the paths written. This is the command line's choice only:
`import fewstep` in a user's program changes no filter, logger or environment variable, so warnings
the user's own code triggers still show there.

Nothing here imports a framework: the libraries read their log levels from the environment when they
are imported, and the Python-side filters act on module names.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from typing import Iterator

LEVELS = ("quiet", "normal", "verbose")

#: the libraries whose own chatter the CLI hides (module-name prefixes)
LIBRARIES = ("torch", "torchvision", "diffusers", "transformers", "huggingface_hub", "safetensors", "accelerate",
             "peft", "mindspore", "mindone", "ray", "cv2", "imageio")

# Log levels the libraries read from the environment when imported; set only where the user has not
# chosen one. GLOG_v=3 is MindSpore's ERROR (its C++ and Python loggers both read it).
_ENVIRONMENT = {"GLOG_v": "3", "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}

_level = "normal"


def add_flags(parser) -> None:
    """--quiet / --verbose on a command's parser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print only the paths of the files written")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="let the libraries' own logs and warnings through (hidden by default)")


def level_of(args) -> str:
    return "quiet" if getattr(args, "quiet", False) else "verbose" if getattr(args, "verbose", False) else "normal"


@contextlib.contextmanager
def command_output(level: str = "normal") -> Iterator[None]:
    """This process set up for one command at `level`, and put back afterwards (so `fewstep.cli.main`
    called in a program or a test leaves no filter behind). Below "verbose", third-party warnings and log
    records below ERROR are dropped and what the libraries print to stdout is held back
    (`ChatterFilter`); at "quiet", progress bars are off too."""
    global _level
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    saved_level, saved_env = _level, {key: os.environ.get(key) for key in (*_ENVIRONMENT, "TQDM_DISABLE")}
    loggers = {name: logging.getLogger(name) for name in LIBRARIES}
    saved_loggers = {name: logger.level for name, logger in loggers.items()}
    _level, chatter = level, None
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            if level == "verbose":  # fewstep's own INFO records (e.g. a folder's scheduler replaced) too
                stack.enter_context(_fewstep_info_logs())
            else:
                _quieten(level, loggers.values())
                chatter = stack.enter_context(_filtered_stdout())
            yield
    except BaseException:
        if chatter is not None:
            sys.stderr.write(chatter.held.getvalue())  # what the libraries said may explain the failure
        raise
    finally:
        _level = saved_level
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name, logger in loggers.items():
            logger.setLevel(saved_loggers[name])


def _quieten(level: str, loggers) -> None:
    for key, value in _ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    if level == "quiet":
        os.environ["TQDM_DISABLE"] = "1"  # read when tqdm is imported: fewstep's bars and the libraries' alike
    # Libraries imported before this command (in-process use of `fewstep.cli.main`) have read their
    # levels already; their loggers are set directly as well.
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    # A warning is attributed to the module its `stacklevel` names: one a library raises about itself is
    # hidden; one a library attributes to fewstep's call is not (that is fewstep's to fix).
    warnings.filterwarnings("ignore", module=r"(%s)(\.|$)" % "|".join(LIBRARIES))


@contextlib.contextmanager
def _fewstep_info_logs():
    logger, handler = logging.getLogger("fewstep"), logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


@contextlib.contextmanager
def _filtered_stdout():
    chatter = ChatterFilter(sys.stdout)
    with contextlib.redirect_stdout(chatter):
        yield chatter


def say(*args, **kwargs) -> None:
    """A line of fewstep's own (settings, seeds, timings): printed unless --quiet."""
    if _level != "quiet":
        print(*args, **kwargs)


def wrote(path: str, note: str = "", file=None, label: str = "wrote") -> None:
    """A file written: "<label> <absolute path><note>", or the path alone under --quiet."""
    path = os.path.abspath(path)
    print(path if _level == "quiet" else f"{label} {path}{note}", file=file)


class ChatterFilter(io.TextIOBase):
    """stdout for a command: what fewstep's modules print passes; what a library prints (a `print` in its
    import, say) is held, and shown on stderr only if the command fails, where it may explain why. The
    printing module is the caller of `write` (print is a builtin, so its caller's frame is next)."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream
        self.held = io.StringIO()

    def write(self, text: str) -> int:
        module = sys._getframe(1).f_globals.get("__name__", "")
        ours = module in ("__main__", "fewstep") or module.startswith("fewstep.")
        return (self.stream if ours else self.held).write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # encoding, isatty, fileno...: the real stream's
        return getattr(self.stream, name)
