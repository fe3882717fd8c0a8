"""The review-level benchmark on real data with the packaged default bundle: each row is the
device's rule with that option, so more review means more cells flagged, never fewer."""
from __future__ import annotations

import json

from click.testing import CliRunner

from hemaedge.benchmarks.tools.review_levels import LEVELS, main, settings


def test_review_levels_table_on_real_cells(bccd, pbc_raw_val, bloodmnist128, tmp_path):
    from hemaedge.edge.defaults import packaged_default_bundle

    res = CliRunner().invoke(main, ["--bundle", str(packaged_default_bundle()), "--name", "t", "--bccd", str(bccd),
                                    "--pbc", str(pbc_raw_val), "--bloodmnist128", str(bloodmnist128),
                                    "--val-spread", "40", "--pbc-spread", "12", "--threads", "1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "review_levels_t.json").read_text())
    assert "| --review-classes erythroblast,ig |" in (tmp_path / "review_levels_t.md").read_text()
    names = [n for n, _ in settings(LEVELS)]
    assert len(names) == 6 and 0.8 < r["bundle_review_level"] < 0.95  # the default row sits between those two
    for data in r["sets"].values():
        rows = dict(zip(names, data["rows"]))
        assert len({(v["right"], v["wrong"]) for v in data["rows"]}) == 1  # an option flags, it never re-labels
        levels = [rows[f"--review-level {p:g}"] for p in LEVELS]
        order = [levels[0], levels[1], rows["bundle's review level (default)"], levels[2], levels[3]]
        for side in ("right_flagged", "wrong_flagged"):
            assert [v[side] for v in order] == sorted(v[side] for v in order)
            assert rows[f"--review-classes {'erythroblast,ig'}"][side] >= rows["bundle's review level (default)"][side]
    bccd_rows = dict(zip(names, r["sets"]["BCCD val"]["rows"]))
    # on another microscope the two ends differ: 0.62 flags fewer right answers than 0.98
    assert bccd_rows["--review-level 0.62"]["right_flagged"] < bccd_rows["--review-level 0.98"]["right_flagged"]
