"""The report's stylesheet and script, inlined into every page (no server, no network, no CDN).

The script sorts a table when a column header's button is clicked (numbers by the cell's
``data-value``, blanks last; text case-insensitively; a second click reverses) and filters each table
by the text typed into its filter box.
"""

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1d1d1f; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.scroll { overflow-x: auto; }
table.lb { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
table.lb th, table.lb td { border-bottom: 1px solid #ddd; padding: .25rem .5rem; text-align: right; white-space: nowrap; }
table.lb th:nth-child(-n+3), table.lb td:nth-child(-n+3), table.lb td:last-child, table.lb th:last-child { text-align: left; }
table.lb td.budget { white-space: normal; min-width: 14rem; }
table.lb th button { font: inherit; font-weight: 600; background: none; border: 0; padding: 0; cursor: pointer; }
table.lb th[aria-sort=ascending] button::after { content: " \\25B2"; }
table.lb th[aria-sort=descending] button::after { content: " \\25BC"; }
table.lb tr.worst td { font-weight: 600; background: #f6f6f8; }
input.filter { padding: .3rem .5rem; width: 20rem; }
.count { color: #666; margin-left: .5rem; }
.notes { color: #444; font-size: 12.5px; } .notes li { margin: .25rem 0; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 12.5px; max-width: 60rem; }
"""

JS = """
(function () {
  function sortKey(tr, col, numeric) {
    var td = tr.cells[col];
    var v = td.hasAttribute("data-value") ? td.getAttribute("data-value") : td.textContent.trim();
    if (!numeric) { return v.toLowerCase(); }
    return v === "" ? NaN : parseFloat(v);
  }
  document.querySelectorAll("table.lb").forEach(function (table) {
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (th, col) {
      var button = th.querySelector("button");
      if (!button) { return; }
      button.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var numeric = th.getAttribute("data-type") === "number";
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = sortKey(a, col, numeric), y = sortKey(b, col, numeric);
          if (numeric) {
            if (isNaN(x)) { return isNaN(y) ? 0 : 1; }
            if (isNaN(y)) { return -1; }
            return asc ? x - y : y - x;
          }
          return asc ? x.localeCompare(y) : y.localeCompare(x);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.querySelectorAll("input.filter").forEach(function (input) {
    var table = document.getElementById(input.getAttribute("data-table"));
    var count = document.getElementById(input.getAttribute("data-count"));
    input.addEventListener("input", function () {
      var q = input.value.trim().toLowerCase();
      var shown = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (tr) {
        var hit = q === "" || tr.textContent.toLowerCase().indexOf(q) !== -1;
        tr.hidden = !hit;
        if (hit) { shown += 1; }
      });
      count.textContent = shown + " of " + table.tBodies[0].rows.length + " rows";
    });
  });
})();
"""
