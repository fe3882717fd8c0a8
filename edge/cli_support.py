"""Shared command-line plumbing: turn user mistakes into a clear message and exit code 2.

Every command of every group wraps its body with `user_errors`, so a wrong path, a bad bundle
or a corrupt image prints one line saying what is wrong and what to do, never a traceback.

Also here: the one float type of every command's options (`FiniteFloat`: NaN and infinity are
refused, bounds as click.FloatRange), and logging set-up (`setup_logging` for the console,
`log_to_file` for a run's own log).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import shlex
import sys
from pathlib import Path

import click

from hemaedge.edge.errors import HemaedgeError, OutputError, UsageError

# Older name, kept so call sites read naturally in the CLI modules.
UserError = UsageError

# Besides our own root, the OS errors a user causes by naming a wrong path.
_USER_ERROR_TYPES = (HemaedgeError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                     PermissionError)


def user_errors(func):
    """Decorator for click commands: known user errors -> 'Error: ...' on stderr, exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except _USER_ERROR_TYPES as exc:
            raise click.exceptions.Exit(_report(exc)) from None

    return wrapper


def _report(exc) -> int:
    msg = str(exc) or exc.__class__.__name__
    if isinstance(exc, FileNotFoundError) and exc.filename:
        msg = f"{exc.filename}: no such file or directory"
    click.echo(f"Error: {msg}", err=True)
    return 2


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported only when used ("name" -> "module:attr").

    Keeps `--help` and start-up fast and lets each command live next to the code it drives.
    """

    def __init__(self, *args, lazy_commands: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx, name):
        if name in self.lazy_commands:
            import importlib

            module_name, attr = self.lazy_commands[name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        # Listing must not fail because one sub-command's module (or its extra) is missing.
        rows = []
        for name in self.list_commands(ctx):
            try:
                cmd = self.get_command(ctx, name)
                text = cmd.get_short_help_str(limit=formatter.width - 20) if cmd else ""
            except ImportError as exc:
                text = f"(unavailable here: {exc})"
            rows.append((name, text))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def command_line(program: str = "hemaedge") -> str:
    """The command that made a result, as a user would retype it (every table records one).

    `program` is how the command starts: "hemaedge" for the CLI, "python -m <module>" for a
    script. Started from a shell, that is followed by the words it was given. Called from Python
    (a test's CliRunner, another command), sys.argv belongs to the caller, so the words are rebuilt
    from the current click command's parsed parameters: arguments, then the options that differ
    from their defaults.
    """
    words = shlex.split(program)
    ctx = click.get_current_context(silent=True)
    if _started_as(words) or ctx is None:
        return shlex.join([*words, *sys.argv[1:]])
    path = ctx.command_path.split()
    # the root's name: "hemaedge" from the entry point, "main" (or a script's name) from Python;
    # a sub-group called directly ("bench run") keeps its path
    if path and (path[0] in ("hemaedge", "main") or words != ["hemaedge"]):
        path = path[1:]
    return shlex.join([*words, *path, *_parameter_words(ctx)])


def _started_as(words: list[str]) -> bool:
    if words == ["hemaedge"]:
        return Path(sys.argv[0]).name == "hemaedge"
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # set for `python -m module`
    return bool(spec and "-m" in words and words[words.index("-m") + 1:][:1] == [spec.name])


def _parameter_words(ctx) -> list[str]:
    args, opts = [], []
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        values = list(value) if isinstance(value, (tuple, list)) else [value]
        if isinstance(p, click.Argument):
            args += [str(v) for v in values if v is not None]
        elif value is None or value == p.default or (p.default is not None and str(value) == str(p.default)):
            continue
        elif p.is_flag:
            flag = p.opts[0] if value else (p.secondary_opts[:1] or [None])[0]
            opts += [flag] if flag else []
        else:
            for v in values:
                opts += [p.opts[0], str(v)]
    return args + opts


# ----------------------------------------------------------------------------- option types


class FiniteFloat(click.FloatRange):
    """A float option that refuses NaN and infinity (click's float and FloatRange accept them,
    and a NaN threshold or rate silently poisons every result); bounds as click.FloatRange."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def _describe_range(self) -> str:
        return super()._describe_range() if (self.min is not None or self.max is not None) else "finite"

    def __repr__(self) -> str:
        return f"FiniteFloat({self._describe_range()})"


FINITE_FLOAT = FiniteFloat()
# Rates, sizes, temperatures and other hyper-parameters that only make sense above zero.
POSITIVE_FLOAT = FiniteFloat(min=0, min_open=True)


# ----------------------------------------------------------------------------- logging

LOGGER = "hemaedge"
_LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


class _ConsoleFormatter(logging.Formatter):
    def format(self, record):
        msg = record.getMessage()
        if record.exc_info:  # attached only when debugging (-v): show where it happened
            msg += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            return f"error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"warning: {msg}"
        if record.levelno <= logging.DEBUG:
            return f"debug: {record.name}: {msg}"
        return msg


class _ConsoleHandler(logging.Handler):
    """Writes to the stderr of the moment (click.echo), so it also works under click's test runner."""

    def emit(self, record):
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # noqa: BLE001 - logging must never end the program
            self.handleError(record)


def setup_logging(verbosity: int = 0) -> logging.Logger:
    """Console logging for the `hemaedge` loggers: -1 warnings only (-q), 0 info, 1+ debug (-v).

    Messages below the CLI go through `logging.getLogger(__name__)`; this decides what shows."""
    logger = logging.getLogger(LOGGER)
    for h in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(h)
    level = _LEVELS[max(-1, min(1, verbosity))]
    handler = _ConsoleHandler(level)
    handler.setFormatter(_ConsoleFormatter())
    logger.addHandler(handler)
    logger.setLevel(min(level, logging.INFO))  # a run's log file keeps info even with -q
    return logger


@contextlib.contextmanager
def log_to_file(path: Path, level: int = logging.INFO):
    """Also log to `path` (appending) while the block runs: a device run keeps its own log."""
    logger = logging.getLogger(LOGGER)
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the log ({exc.strerror or exc}); "
                          "choose a writable output folder") from None
    handler.setLevel(logging.DEBUG if logger.getEffectiveLevel() <= logging.DEBUG else level)  # -v: debug too
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(old_level)
