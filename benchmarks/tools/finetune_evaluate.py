"""Evaluate the best checkpoint of a `hemaedge train finetune` run that was stopped early.

    python -m hemaedge.benchmarks.tools.finetune_evaluate RUN [RUN ...]

A run stopped before its last epoch (to give the CPU to another run) has best.keras, state.json and
history.csv but no metrics.json. This runs the trainer's own `evaluate_best` on it (val and test of
best.keras, the same metrics code as a finished run) and records, in metrics.json's commands, the
training command rebuilt from state.json's config, then this command with the epochs it had.
"""
from __future__ import annotations

import json
from pathlib import Path

import click


def training_command(cfg: dict) -> str:
    """The `hemaedge train finetune` command line of a config (as finetune_cli records it)."""
    opts = {k: v for k, v in cfg.items()}
    return "hemaedge train finetune " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in opts.items() if v is not None and not isinstance(v, bool)) + \
        "".join(f" --{'' if v else 'no-'}{k.replace('_', '-')}" for k, v in opts.items() if isinstance(v, bool))


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
def main(runs):
    from hemaedge.train.finetune import FinetuneConfig, evaluate_best, open_data

    for run in runs:
        state = json.loads((run / "state.json").read_text())
        cfg = FinetuneConfig(**{**state["config"], "out": str(run)})
        ds = open_data(cfg.data)
        metrics = run / "metrics.json"
        if not metrics.is_file():  # evaluate_best keeps the commands of an earlier metrics.json
            metrics.write_text(json.dumps({"commands": [training_command(state["config"])]}))
        evaluate_best(cfg, ds, list(ds.classes), cfg.contract(), log=click.echo,
                      command=f"python -m hemaedge.benchmarks.tools.finetune_evaluate {run.name}  "
                              f"# stopped after {state['epoch']} of {cfg.epochs} epochs")


if __name__ == "__main__":
    main()
