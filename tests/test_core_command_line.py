"""The recorded command line (edge.cli_support.command_line): from a shell it is the words typed;
from Python (CliRunner) it is rebuilt from the parsed parameters, so either way it can be retyped."""
from __future__ import annotations

import shlex
import sys

import click
from click.testing import CliRunner

from hemaedge.edge.cli_support import command_line


@click.group()
def main():
    pass


@main.command()
@click.argument("sources", nargs=-1)
@click.option("--out", default="runs/x")
@click.option("--threads", type=int, multiple=True)
@click.option("--plots/--no-plots", default=True)
@click.option("--quiet", is_flag=True)
def run(sources, out, threads, plots, quiet):
    click.echo(command_line())


def test_rebuilt_from_parameters_when_called_from_python():
    r = CliRunner().invoke(main, ["run", "a dir", "b", "--threads", "1", "--threads", "4", "--no-plots",
                                  "--out", "runs/x"])
    assert r.exit_code == 0, r.output
    # arguments first, then only the options that differ from their defaults (--out is the default)
    assert r.output.strip() == "hemaedge run 'a dir' b --threads 1 --threads 4 --no-plots"
    assert shlex.split(r.output)[2] == "a dir"
    r = CliRunner().invoke(run, ["--quiet"])  # a sub-command called on its own keeps its name
    assert r.output.strip() == "hemaedge run --quiet"


def test_the_typed_words_when_started_from_a_shell(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/hemaedge", "edge", "run", "--out", "my runs"])
    assert command_line() == "hemaedge edge run --out 'my runs'"
    monkeypatch.setattr(sys, "argv", ["/repo/benchmarks/x.py", "--limit", "3"])
    assert command_line("python -m hemaedge.benchmarks.x") == "python -m hemaedge.benchmarks.x --limit 3"
