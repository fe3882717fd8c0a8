"""`hemaedge report RUN_DIR` on a real, corrected run: counts and intervals after corrections,
the corrections, the model's digest, the inputs' sha256; never over an existing report."""
from __future__ import annotations

import hashlib
import re

import pytest
from click.testing import CliRunner

pytest.importorskip("reportlab")
pypdf = pytest.importorskip("pypdf")

from review_helpers import sample_run, sample_run_master  # noqa: F401,E402  (fixtures)
from hemaedge.cli import main  # noqa: E402
from hemaedge.edge.defaults import packaged_default_bundle  # noqa: E402
from hemaedge.edge.store import manifest_digest  # noqa: E402
from hemaedge.edge.differential import clopper_pearson  # noqa: E402
from hemaedge.review.rundata import NOT_A_CELL, RunReview  # noqa: E402


def report(*args):
    return CliRunner().invoke(main, ["report", *map(str, args)])


def pdf_text(path) -> str:
    return "\n".join(p.extract_text() for p in pypdf.PdfReader(str(path)).pages)


def test_report_of_a_corrected_run(sample_run):
    run = RunReview.open(sample_run)
    a, b = [c for c in run.cells if c.counted][:2]
    run.correct(a.key, "basophil", reviewer="AT")
    run.correct(b.key, NOT_A_CELL, reviewer="AT")
    res = report(sample_run)
    assert res.exit_code == 0, res.output
    text = pdf_text(sample_run / "report.pdf")
    html = (sample_run / "report.html").read_text()
    n = sum(c.counted for c in run.cells) - 1
    k = sum(c.current == "basophil" for c in run.cells)
    lo, hi = clopper_pearson(k, n)
    for doc in (text, html):
        doc = " ".join(doc.split())
        assert f"{n} cells counted" in doc and "1 marked" in doc
        assert f"{100 * lo:.1f}" in doc and f"{100 * hi:.1f}" in doc
        flat = doc.replace(" ", "")
        assert manifest_digest(packaged_default_bundle()) in flat
        assert hashlib.sha256((sample_run / "cells.csv").read_bytes()).hexdigest() in flat
        assert hashlib.sha256((sample_run / "corrections.csv").read_bytes()).hexdigest() in flat
        assert "AT" in doc
        # the rule the run flagged by, as summary.json records it (two-tier OOD level, not the old fixed 0.6)
        level = run.summary["identify"]["ood"]["review_level"]
        assert f"flagged by the model (top probability below {level:.3g}" in doc
    assert f"{a.model_class} ({a.confidence:.2f})" in html and a.key in html
    # self-contained: images are inline, nothing is fetched from elsewhere
    assert not re.search(r'src="(?!data:)', html)
    unid = [c for c in RunReview.open(sample_run).cells  # not the cells cut by the frame edge (never classified)
            if c.flagged and not c.reviewed and c.current != NOT_A_CELL and c.model_class != "not classified"]
    assert html.count('src="data:image/png;base64,') == len(unid) > 0


def test_existing_report_is_never_overwritten_silently(sample_run, tmp_path):
    assert report(sample_run).exit_code == 0
    before = (sample_run / "report.pdf").read_bytes()
    RunReview.open(sample_run).correct(RunReview.open(sample_run).cells[0].key, "eosinophil")
    res = report(sample_run)
    assert res.exit_code == 2 and "already exist" in res.output and "Traceback" not in res.output
    assert (sample_run / "report.pdf").read_bytes() == before
    assert report(sample_run, "--out", tmp_path / "second").exit_code == 0
    assert (tmp_path / "second" / "report.html").is_file()
    assert report(sample_run, "--force").exit_code == 0
    assert (sample_run / "report.pdf").read_bytes() != before
    assert not list(sample_run.glob(".report*"))


def test_report_of_something_that_is_not_a_run(tmp_path):
    res = report(tmp_path)
    assert res.exit_code == 2 and "cells.csv" in res.output


def test_signed_report_checks_out_and_catches_changes(sample_run, tmp_path):
    pytest.importorskip("nacl")
    import json

    from hemaedge.edge.signing import new_key_pair

    key, pub = new_key_pair(tmp_path / "keys", "lab")
    other_key, other_pub = new_key_pair(tmp_path / "keys", "other")
    RunReview.open(sample_run).correct(RunReview.open(sample_run).cells[0].key, "monocyte")
    res = report(sample_run, "--sign", key, "--reviewer", "AT")
    assert res.exit_code == 0, res.output
    record = json.loads((sample_run / "report.json").read_text())
    assert record["signature"]["algorithm"] == "ed25519" and set(record["documents"]) == {"report.html", "report.pdf"}
    assert record["signature"]["key_id"] in " ".join(pdf_text(sample_run / "report.pdf").split())
    ok = report(sample_run, "--check", "--key", pub)
    assert ok.exit_code == 0 and "signature valid" in ok.output
    # signed by another key
    bad = report(sample_run, "--check", "--key", other_pub)
    assert bad.exit_code == 2 and "does not trust" in bad.output
    # the record edited after signing (a count changed)
    record["differential"]["cells"] += 1
    (sample_run / "report.json").write_text(json.dumps(record))
    bad = report(sample_run, "--check", "--key", pub)
    assert bad.exit_code == 2 and "does not match" in bad.output
    # a new correction after the report: the inputs no longer match
    assert report(sample_run, "--force", "--sign", key).exit_code == 0
    RunReview.open(sample_run).correct(RunReview.open(sample_run).cells[1].key, "monocyte")
    bad = report(sample_run, "--check", "--key", pub)
    assert bad.exit_code == 2 and "corrections.csv changed" in bad.output
    # the PDF replaced
    assert report(sample_run, "--force", "--sign", key).exit_code == 0
    (sample_run / "report.pdf").write_bytes(b"%PDF-1.4 forged")
    bad = report(sample_run, "--check")
    assert bad.exit_code == 2 and "report.pdf differs" in bad.output


def test_flag_rule_names_the_class_policy():
    from hemaedge.report import flag_rule

    summary = {"identify": {"ood": {"review_level": 0.95, "flag_source": "user"},
                            "review_classes": ["erythroblast", "immature_granulocyte"]}}
    assert flag_rule(summary) == ("top probability below 0.95 (user level); "
                                  "every erythroblast, immature granulocyte call")
    assert flag_rule({"review_threshold": 0.6}) == "confidence below 0.6"
    assert flag_rule({}) == "rule not recorded"
