"""The review page in a real browser (Debian's Chromium, headless, through Playwright): a real
run of the packaged default bundle on samples/, corrected with the keyboard."""
from __future__ import annotations

import pytest

from review_helpers import CHROMIUM, LiveServer, launch_chromium, sample_run, sample_run_master  # noqa: F401

pytest.importorskip("starlette")
sync_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not installed (.ci/run installs it: apt-get install chromium)", allow_module_level=True)

from hemaedge.review.app import create_app  # noqa: E402
from hemaedge.review.rundata import RunReview, read_corrections  # noqa: E402


def dom_count(page, cls: str) -> int:
    return int(page.inner_text(f'#differential tr[data-class="{cls}"] .count'))


def test_keyboard_reclassify_undo_and_context(sample_run):
    run = RunReview.open(sample_run)
    with LiveServer(create_app(sample_run)) as srv, sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            requested = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(srv.url + "/")
            page.wait_for_selector("body[data-ready='1']")
            first = page.get_attribute("figure.cell.selected", "data-key")
            assert run.by_key[first].flagged  # the gallery opens on the flagged cells
            # go to the first cell the differential counts (a platelet candidate left out of the
            # count, as the default model flags some, would not change the counts)
            order = [c.key for _, c in run.gallery()]
            first = next(k for k in order if run.by_key[k].counted)
            for _ in range(order.index(first)):
                page.keyboard.press("ArrowRight")
            assert page.get_attribute("figure.cell.selected", "data-key") == first
            cell = run.by_key[first]
            target = "lymphocyte" if cell.model_class != "lymphocyte" else "monocyte"
            key = str(run.classes.index(target) + 1)
            before_old, before_new = dom_count(page, cell.model_class), dom_count(page, target)

            page.keyboard.press(key)  # one key press corrects the cell and moves on
            page.wait_for_function(f"document.querySelector('#status').textContent.includes('{first}')")
            assert dom_count(page, target) == before_new + 1
            assert dom_count(page, cell.model_class) == before_old - 1
            rows = read_corrections(sample_run)
            assert [(f"{r['frame']}:{r['cell']}", r["old_class"], r["new_class"]) for r in rows] == \
                [(first, cell.model_class, target)]
            assert page.get_attribute("figure.cell.selected", "data-key") != first
            assert page.inner_text(f'figure[data-key="{first}"] .current') == target

            page.keyboard.press("u")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('undone')")
            assert dom_count(page, target) == before_new and dom_count(page, cell.model_class) == before_old
            assert [r["action"] for r in read_corrections(sample_run)] == ["reclassify", "undo"]

            page.keyboard.press("c")
            page.wait_for_function("document.querySelector('#context-img').complete && "
                                   "document.querySelector('#context-img').naturalWidth > 0")
            assert not page.is_hidden("#context-box")
            # everything the page loaded came from the review server itself (no CDN)
            assert requested and all(u.startswith(srv.url) for u in requested), requested
        finally:
            browser.close()


def test_keyboard_flow_goes_on_across_pages(sample_run):
    """With a small page size: the key on a page's last cell saves it and opens the next page;
    an undo of a cell on another page goes back to it."""
    run = RunReview.open(sample_run)
    order = [c.key for _, c in run.gallery()]
    with LiveServer(create_app(sample_run, page_size=4)) as srv, sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.goto(srv.url + "/")
            page.wait_for_selector("body[data-ready='1']")
            for _ in range(3):
                page.keyboard.press("ArrowRight")
            assert page.get_attribute("figure.cell.selected", "data-key") == order[3]
            last = run.by_key[order[3]]
            target = "lymphocyte" if last.model_class != "lymphocyte" else "monocyte"
            with page.expect_navigation():
                page.keyboard.press(str(run.classes.index(target) + 1))  # one key: saved, next page
            page.wait_for_selector("body[data-ready='1']")
            assert "page=2" in page.url
            assert page.get_attribute("figure.cell.selected", "data-key") == order[4]
            assert [(f"{r['frame']}:{r['cell']}", r["new_class"]) for r in read_corrections(sample_run)] == \
                [(order[3], target)]
            with page.expect_navigation():
                page.keyboard.press("u")  # the undone cell is on page 1: the page goes there
            page.wait_for_selector("body[data-ready='1']")
            assert page.get_attribute("figure.cell.selected", "data-key") == order[3]
            assert page.inner_text(f'figure[data-key="{order[3]}"] .current') == last.model_class.replace("_", " ")
            assert [r["action"] for r in read_corrections(sample_run)] == ["reclassify", "undo"]
        finally:
            browser.close()
