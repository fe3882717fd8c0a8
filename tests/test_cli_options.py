"""Option types shared by every command: no float option of the CLI accepts NaN or infinity."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from hemaedge.cli import main
from hemaedge.edge.cli_support import FiniteFloat


def _commands(cmd, ctx, path):
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None:
                yield from _commands(sub, ctx, [*path, name])
    else:
        yield " ".join(path), cmd


def test_every_float_option_of_the_cli_refuses_nan_and_infinity():
    ctx = click.Context(main)
    commands = dict(_commands(main, ctx, ["hemaedge"]))
    assert "hemaedge edge run" in commands and len(commands) > 10
    loose = [(name, p.name) for name, cmd in commands.items() for p in cmd.params
             if isinstance(p.type, click.types.FloatParamType) and not isinstance(p.type, FiniteFloat)]
    assert loose == []


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_finite_float_refuses(value):
    with pytest.raises(click.BadParameter, match="not a finite number"):
        FiniteFloat().convert(value, None, None)


def test_finite_float_keeps_bounds_and_help():
    t = FiniteFloat(0, 1)
    assert t.convert("0.25", None, None) == 0.25
    with pytest.raises(click.BadParameter):
        t.convert("1.5", None, None)
    res = CliRunner().invoke(main, ["edge", "run", "--help"])
    assert "--review-threshold FLOAT RANGE" in res.output and "0<=x<=1" in res.output


def test_top_level_verbosity_options_are_listed():
    res = CliRunner().invoke(main, ["--help"])
    assert "--verbose" in res.output and "--quiet" in res.output
