// hemaedge review page: select a cell, press its class's key (like a manual differential counter).
// The server writes every change to corrections.csv before it answers; the page only shows it.
"use strict";
(function () {
  const init = JSON.parse(document.getElementById("initial-state").textContent);
  const keys = init.keys;            // "1" -> "basophil", ..., "0" -> "not_a_cell"
  const pager = init.pager;          // this page of the gallery: {page, pages, first, last, total}
  const figures = Array.from(document.querySelectorAll("figure.cell"));
  const byKey = new Map(figures.map((f) => [f.dataset.key, f]));
  const status = document.getElementById("status");
  const chooser = document.getElementById("chooser");
  const ctxBox = document.getElementById("context-box");
  const ctxImg = document.getElementById("context-img");
  let selected = -1;
  let busy = false;

  const label = (c) => (c === "not_a_cell" ? "not a cell" : c.replace(/_/g, " "));

  // The gallery comes in pages (a page loads fast whatever the run's size); moving past either
  // end of a page opens the next / previous one, so the keyboard flow never stops.
  function goPage(n, at) {
    if (n < 1 || n > pager.pages || n === pager.page) return false;
    status.textContent = "opening page " + n + " of " + pager.pages + "\u2026";
    location.assign("?page=" + n + (at ? "&" + at : ""));
    return true;
  }

  function select(i) {
    if (!figures.length) return;
    if (i >= figures.length && goPage(pager.page + 1, "")) return;
    if (i < 0 && goPage(pager.page - 1, "at=last")) return;
    selected = Math.max(0, Math.min(figures.length - 1, i));
    figures.forEach((f, j) => f.classList.toggle("selected", j === selected));
    const f = figures[selected];
    f.focus({ preventScroll: true });
    f.scrollIntoView({ block: "nearest" });
    chooser.hidden = false;
    if (!ctxBox.hidden) showContext();
  }

  function showContext() {
    const f = figures[selected];
    if (!f || !f.dataset.context) {
      ctxBox.hidden = true;
      status.textContent = "no context view saved for this cell";
      return;
    }
    ctxImg.src = "/img/context/" + encodeURIComponent(f.dataset.context);
    document.getElementById("context-caption").textContent = "cell " + f.dataset.key;
    ctxBox.hidden = false;
  }

  function render(state) {
    const d = state.differential;
    for (const row of d.rows) {
      const tr = document.querySelector('#differential tr[data-class="' + CSS.escape(row.class) + '"]');
      if (!tr) continue;
      tr.querySelector(".count").textContent = row.count;
      tr.querySelector(".pct").textContent = row.percent.toFixed(1);
      tr.querySelector(".ci").textContent = row.ci95_low.toFixed(1) + "\u2013" + row.ci95_high.toFixed(1);
    }
    document.getElementById("not-a-cell").textContent = d.not_a_cell;
    document.getElementById("n-cells").textContent = d.cells;
    document.getElementById("flagged-left").textContent = d.flagged_unreviewed;
    document.getElementById("changed").textContent = d.changed;
    for (const [key, c] of Object.entries(state.cells)) {
      const f = byKey.get(key);
      if (!f) continue;
      f.querySelector(".current").textContent = label(c.current);
      f.classList.toggle("changed", c.current !== f.dataset.model);
      f.classList.toggle("reviewed", c.reviewed);
      f.classList.toggle("nac", c.current === "not_a_cell");
    }
  }

  async function post(url, body) {
    if (busy) return null;
    busy = true;
    try {
      const r = await fetch(url, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body || {}), credentials: "same-origin",
      });
      const data = await r.json();
      if (!r.ok) { status.textContent = "not saved: " + (data.error || r.status); return null; }
      render(data);
      return data;
    } catch (e) {
      status.textContent = "not saved (server unreachable): " + e;
      return null;
    } finally {
      busy = false;
    }
  }

  async function setClass(cls) {
    if (selected < 0) select(0);
    const f = figures[selected];
    if (!f) return;
    const data = await post("/api/correct", { cell: f.dataset.key, class: cls });
    if (data && data.row) {
      status.textContent = "cell " + f.dataset.key + ": " + label(data.row.old_class) + " \u2192 " + label(cls);
      select(selected + 1);
    }
  }

  async function undo() {
    const data = await post("/api/undo", {});
    if (!data) return;
    if (!data.row) { status.textContent = "nothing to undo"; return; }
    const key = data.row.frame + ":" + data.row.cell;
    status.textContent = "undone: cell " + key + " is " + label(data.row.new_class) + " again";
    const i = figures.indexOf(byKey.get(key));
    if (i >= 0) select(i);
    else goPage(data.page, "select=" + encodeURIComponent(key));
  }

  document.addEventListener("keydown", (e) => {
    if (e.altKey || e.metaKey) return;
    if ((e.ctrlKey && e.key === "z") || (!e.ctrlKey && e.key === "u")) { e.preventDefault(); undo(); return; }
    if (e.ctrlKey) return;
    if (keys[e.key]) { e.preventDefault(); setClass(keys[e.key]); return; }
    if (e.key === "ArrowRight" || e.key === "k") { e.preventDefault(); select(selected + 1); }
    else if (e.key === "ArrowLeft" || e.key === "j") { e.preventDefault(); select(selected - 1); }
    else if (e.key === "PageDown") { e.preventDefault(); goPage(pager.page + 1, ""); }
    else if (e.key === "PageUp") { e.preventDefault(); goPage(pager.page - 1, ""); }
    else if (e.key === "c") { if (ctxBox.hidden) showContext(); else ctxBox.hidden = true; }
    else if (e.key === "Escape") { ctxBox.hidden = true; }
  });
  figures.forEach((f, i) => f.addEventListener("click", () => select(i)));
  chooser.querySelectorAll("button[data-class]").forEach((b) =>
    b.addEventListener("click", () => setClass(b.dataset.class)));
  document.getElementById("undo-btn").addEventListener("click", undo);
  render(init);
  const q = new URLSearchParams(location.search);
  const wanted = q.get("select") ? figures.indexOf(byKey.get(q.get("select"))) : -1;
  if (figures.length) select(wanted >= 0 ? wanted : (q.get("at") === "last" ? figures.length - 1 : 0));
  document.body.dataset.ready = "1";
})();
