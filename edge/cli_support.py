"""Shared command-line plumbing: turn user mistakes into a clear message and exit code 2.

Every command of every group wraps its body with `user_errors`, so a wrong path, a bad bundle
or a corrupt image prints one line saying what is wrong and what to do, never a traceback.
"""
from __future__ import annotations

import functools

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
