"""Result tables: the .json/.md pair, and a bundle's table name that never takes the default's."""
from __future__ import annotations

import json
import shutil

from hemaedge.benchmarks.tools.result_files import result_name, write_result
from hemaedge.edge.defaults import packaged_default_bundle


def test_a_copy_of_the_default_bundle_gets_its_own_table_name(tmp_path):
    assert result_name(packaged_default_bundle()) == "default"
    copy = tmp_path / "default-v2-lite0-ep10"
    shutil.copytree(packaged_default_bundle(), copy)
    assert result_name(copy) == "default-v2-lite0-ep10"  # would have overwritten ood_calibrate_default.*


def test_the_pair_keeps_a_dotted_name(tmp_path):
    j, m = write_result(tmp_path / "sub" / "bundle-v1.2", {"a": 1}, "# t\n")
    assert j.name == "bundle-v1.2.json" and m.name == "bundle-v1.2.md"
    assert json.loads(j.read_text()) == {"a": 1} and m.read_text() == "# t\n"
