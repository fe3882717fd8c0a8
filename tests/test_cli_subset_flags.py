"""Each quick-run subset policy has its own flag; the old `--limit` is refused, not reinterpreted."""
import pytest
from click.testing import CliRunner

from hemaedge.cli import main

OLD = [["train", "finetune"], ["train", "ensemble"], ["train", "hybrid"], ["train", "adapt"],
       ["export", "tflite"], ["export", "all"], ["bench", "run"]]
NEW = {("train", "finetune"): "--per-class", ("train", "ensemble"): "--per-class", ("train", "hybrid"): "--per-class", ("train", "adapt"): "--sample",
       ("export", "tflite"): "--sample", ("export", "all"): "--sample-seed", ("bench", "run"): "--spread"}


@pytest.mark.parametrize("cmd", OLD, ids=" ".join)
def test_old_limit_flag_is_a_usage_error(cmd):
    res = CliRunner().invoke(main, [*cmd, "--limit", "5"])
    assert res.exit_code == 2 and "No such option '--limit'" in res.output, res.output


@pytest.mark.parametrize("cmd,flag", NEW.items(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
def test_new_flags_are_offered(cmd, flag):
    res = CliRunner().invoke(main, [*cmd, "--help"])
    assert res.exit_code == 0 and flag in res.output, res.output
