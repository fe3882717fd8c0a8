"""Shared command-line plumbing: turn user mistakes into a clear message and exit code 2.

Every command of every group wraps its body with `user_errors`, so a wrong path, a bad bundle
or a corrupt image prints one line saying what is wrong and what to do, never a traceback.
"""
from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path

import click

from hemaedge.edge.errors import HemaedgeError, UsageError

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
