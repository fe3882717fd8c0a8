"""The review server on a real run (packaged default bundle on samples/): corrections reach
corrections.csv and the counts, survive a restart and a kill -9, and nothing but this run's
crops is ever served."""
from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from review_helpers import sample_run, sample_run_master  # noqa: F401,E402  (fixtures)
from hemaedge.review.app import create_app  # noqa: E402
from hemaedge.review.rundata import NOT_A_CELL, RunReview, read_corrections  # noqa: E402

BASE = "http://127.0.0.1:8050"


def client(run, **kw):
    return TestClient(create_app(run, **kw), base_url=BASE)


def counts(state):
    return {r["class"]: r["count"] for r in state["differential"]["rows"]}


def test_page_shows_every_cell_flagged_first(sample_run):
    c = client(sample_run)
    html = c.get("/").text
    run = RunReview.open(sample_run)
    assert html.count('<figure class="cell') == len(run.cells)
    headers = [h.strip() for h in re.findall(r'<h2 class="group">([^<]+)<small', html)]
    unid = [x.key for x in run.cells if x.model_class == "unidentified"]
    assert headers[:2] == (["Unidentified", "Flagged for review"] if unid else ["Flagged for review", headers[1]])
    assert len(headers) == len(run.groups())
    starts = [m.start() for m in re.finditer('<h2 class="group">', html)]
    blocks = [html[a:b] for a, b in zip(starts, starts[1:] + [len(html)])]
    if unid:
        assert sorted(re.findall(r'data-key="([^"]+)"', blocks[0])) == sorted(unid)
    flagged_block = blocks[1 if unid else 0]
    assert sorted(re.findall(r'data-key="([^"]+)"', flagged_block)) == \
        sorted(x.key for x in run.cells if x.flagged and x.model_class not in ("unidentified", "not classified"))
    cut = [x.key for x in run.cells if x.model_class == "not classified"]  # cut by the frame edge: last
    assert cut and headers[-1].startswith("Cut by the frame edge")
    assert sorted(re.findall(r'data-key="([^"]+)"', blocks[-1])) == sorted(cut)


def test_correction_updates_counts_and_file_and_survives_restart(sample_run):
    c = client(sample_run)
    before = counts(c.get("/api/state").json())
    run = RunReview.open(sample_run)
    cell = next(x for x in run.cells if x.model_class != "lymphocyte" and x.counted)
    state = c.post("/api/correct", json={"cell": cell.key, "class": "lymphocyte"}).json()
    after = counts(state)
    assert after["lymphocyte"] == before["lymphocyte"] + 1
    assert after[cell.model_class] == before[cell.model_class] - 1
    rows = read_corrections(sample_run)
    assert [(r["frame"], r["cell"], r["old_class"], r["new_class"], r["action"]) for r in rows] == \
        [(str(cell.frame), str(cell.cell), cell.model_class, "lymphocyte", "reclassify")]
    # a new server (after a restart) starts from the file
    assert counts(client(sample_run).get("/api/state").json()) == after
    # not a cell: leaves the differential
    state = c.post("/api/correct", json={"cell": cell.key, "class": NOT_A_CELL}).json()
    assert state["differential"]["cells"] == sum(x.counted for x in run.cells) - 1
    assert state["differential"]["not_a_cell"] == 1


def test_undo_reverts_in_order_and_is_logged(sample_run):
    c = client(sample_run)
    run = RunReview.open(sample_run)
    a, b = run.cells[0], run.cells[1]
    base = counts(c.get("/api/state").json())
    c.post("/api/correct", json={"cell": a.key, "class": "basophil"})
    c.post("/api/correct", json={"cell": b.key, "class": "basophil"})
    r1 = c.post("/api/undo", json={}).json()
    assert r1["row"]["cell"] == b.cell and r1["row"]["new_class"] == b.model_class
    r2 = c.post("/api/undo", json={}).json()
    assert r2["row"]["cell"] == a.cell and counts(r2) == base
    assert c.post("/api/undo", json={}).json()["row"] is None
    assert [r["action"] for r in read_corrections(sample_run)] == ["reclassify", "reclassify", "undo", "undo"]


def test_gallery_comes_in_pages_that_cover_every_cell_once(sample_run):
    """A big run's page stays small: `page_size` cells per page, in gallery order, none twice."""
    run = RunReview.open(sample_run)
    c = client(sample_run, page_size=5)
    order = [cell.key for _, cell in run.gallery()]
    pages = -(-len(order) // 5)
    seen = []
    for n in range(1, pages + 1):
        html = c.get(f"/?page={n}").text
        keys = re.findall(r'<figure class="cell[^"]*"[^>]*data-key="([^"]+)"', html)
        assert 0 < len(keys) <= 5
        assert f"page {n} of {pages}" in html
        seen += keys
    assert seen == order
    assert re.findall(r'data-key="([^"]+)"', c.get("/?page=999").text) == \
        re.findall(r'data-key="([^"]+)"', c.get(f"/?page={pages}").text)  # past the end: the last page
    assert "page 1 of" in c.get("/?page=abc").text
    # the page's state carries its own cells only; the counts are the whole run's
    init = re.search(r'<script id="initial-state" type="application/json">(.*?)</script>',
                     c.get("/?page=2").text).group(1)
    import json
    state = json.loads(init)
    assert sorted(state["cells"]) == sorted(order[5:10])
    assert state["differential"]["cells"] == sum(x.counted for x in run.cells)
    # undoing a correction says which page the cell is on
    c.post("/api/correct", json={"cell": order[7], "class": "basophil"})
    assert c.post("/api/undo", json={}).json()["page"] == 2


def test_bad_requests_are_refused(sample_run):
    c = client(sample_run)
    key = RunReview.open(sample_run).cells[0].key
    assert c.post("/api/correct", json={"cell": "999:9", "class": "basophil"}).status_code == 404
    assert c.post("/api/correct", json={"cell": key, "class": "dragon"}).status_code == 400
    # a form post (what a foreign web page can send without a preflight) and a foreign origin
    assert c.post("/api/correct", data={"cell": key, "class": "basophil"}).status_code == 415
    assert c.post("/api/correct", json={"cell": key, "class": "basophil"},
                  headers={"Origin": "http://evil.example"}).status_code == 403
    # a foreign Host header (DNS rebinding)
    assert c.get("/", headers={"Host": "evil.example"}).status_code == 400
    assert not (sample_run / "corrections.csv").exists()


@pytest.mark.parametrize("path", [
    "/img/crops/../cells.csv", "/img/crops/..%2Fcells.csv", "/img/crops/%2e%2e%2fcells.csv",
    "/img/crops/%2E%2E/summary.json", "/img/..%2F..%2Fetc/passwd", "/img/crops//etc/passwd",
    "/img/crops/%2Fetc%2Fpasswd", "/img/summary.json/x", "/img/frames/f000000_c0000.png",
    "/static/../rundata.py", "/static/%2e%2e/rundata.py", "/static/..%2Fapp.py", "/cells.csv", "/summary.json",
])
def test_path_tricks_get_nothing(sample_run, path):
    r = client(sample_run).get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert b"frame,name" not in r.content and b"root:" not in r.content and b"import" not in r.content


def test_symlinked_crops_are_not_followed(sample_run, tmp_path):
    run = RunReview.open(sample_run)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    name = run.cells[0].crop
    c = client(sample_run)
    assert c.get(f"/img/crops/{name}").status_code == 200
    (sample_run / "crops" / name).unlink()
    os.symlink(secret, sample_run / "crops" / name)
    r = client(sample_run).get(f"/img/crops/{name}")
    assert r.status_code == 404 and b"secret" not in r.content
    # a whole crops folder that is a link elsewhere
    other = tmp_path / "elsewhere"
    os.rename(sample_run / "context", other)
    os.symlink(other, sample_run / "context")
    assert client(sample_run).get(f"/img/context/{name}").status_code == 404


def test_token_required_when_set(sample_run):
    c = client(sample_run, token="s3cret")
    assert c.get("/").status_code == 403
    assert c.get("/api/state").status_code == 403
    assert c.post("/api/undo", json={}).status_code == 403
    assert c.get("/?token=wrong").status_code == 403
    r = c.get("/?token=s3cret")
    assert r.status_code == 200 and "hemaedge_review_token" in r.headers["set-cookie"]
    assert c.get("/api/state").status_code == 200  # the cookie carries it from now on
    assert client(sample_run, token="s3cret").get("/api/state", headers={"X-Review-Token": "s3cret"}).status_code == 200


def test_cli_refuses_a_missing_run(tmp_path):
    from click.testing import CliRunner

    from hemaedge.cli import main

    res = CliRunner().invoke(main, ["review", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "Error:" in res.output and "Traceback" not in res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["review", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "cells.csv" in res.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_corrections_survive_kill_9_of_the_server(sample_run):
    import httpx

    port = _free_port()
    exe = Path(sys.executable).with_name("hemaedge")
    proc = subprocess.Popen([str(exe), "review", str(sample_run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(url + "/api/state", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        keys = [c.key for c in RunReview.open(sample_run).cells[:3]]
        for k in keys:
            r = httpx.post(url + "/api/correct", json={"cell": k, "class": "monocyte"}, timeout=5)
            assert r.status_code == 200
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = read_corrections(sample_run)
    assert [f"{r['frame']}:{r['cell']}" for r in rows] == keys
    run = RunReview.open(sample_run)
    assert all(run.by_key[k].current == "monocyte" for k in keys)
    with open(sample_run / "corrections.csv", newline="") as fh:
        assert len(list(csv.reader(fh))) == 4


def test_cli_requires_a_token_off_localhost(sample_run, monkeypatch):
    """Bound to another address, the server gets a random token, printed in its URL."""
    import uvicorn
    from click.testing import CliRunner

    from hemaedge.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    res = CliRunner().invoke(main, ["review", str(sample_run), "--host", "192.0.2.10", "--port", "8123"])
    assert res.exit_code == 0, res.output
    token = re.search(r"\?token=([\w-]+)", res.output).group(1)
    assert len(token) >= 20 and seen["host"] == "192.0.2.10" and seen["port"] == 8123
    c = TestClient(seen["app"], base_url="http://192.0.2.10:8123")
    assert c.get("/").status_code == 403
    assert c.get(f"/?token={token}").status_code == 200
    # on localhost no token is needed (and none is printed)
    res = CliRunner().invoke(main, ["review", str(sample_run)])
    assert "token=" not in res.output and seen["host"] == "127.0.0.1"
    assert TestClient(seen["app"], base_url=BASE).get("/").status_code == 200


def test_review_and_report_say_which_extra_is_missing(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import hemaedge.cli as cli

    monkeypatch.setattr(cli, "missing_modules", lambda mods: list(mods)[:1])
    for cmd in ("review", "report"):
        res = CliRunner().invoke(cli.main, [cmd, str(tmp_path)])
        assert res.exit_code == 2 and "hemaedge[review]" in res.output, res.output


def test_a_run_listing_a_cell_twice_is_refused(sample_run):
    from hemaedge.edge.errors import DataError

    with open(sample_run / "cells.csv", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    (sample_run / "cells.csv").write_text("\n".join([*lines, lines[1]]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="listed twice"):
        RunReview.open(sample_run)


def test_cells_the_run_did_not_count_stay_out_of_the_differential(sample_run):
    """A run that marks cells as not counted (a `counted` column, e.g. cut by the frame edge)."""
    import csv as _csv

    with open(sample_run / "cells.csv", newline="", encoding="utf-8") as fh:
        rows = list(_csv.DictReader(fh))
    classified = [r for r in rows if r["class"] != "not classified"]  # the cut ones: never counted
    for i, r in enumerate(classified):
        r["counted"] = "0" if i < 2 else "1"
    with open(sample_run / "cells.csv", "w", newline="", encoding="utf-8") as fh:
        w = _csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    d = RunReview.open(sample_run).differential()
    assert d["cells"] == len(classified) - 2 and d["not_counted"] == len(rows) - len(classified) + 2
    assert sum(r["count"] for r in d["rows"]) == len(classified) - 2
