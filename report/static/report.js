"use strict";
// Sort any table with class "sortable" by clicking a header; numbers sort numerically.
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-sort");
    if (v === null) { v = cell.textContent.trim(); }
    var n = Number(v.replace(/[,%\s]/g, ""));
    return (v !== "" && !isNaN(n)) ? n : v.toLowerCase();
  }
  function sortBy(table, col, th) {
    var body = table.tBodies[0];
    if (!body) { return; }
    var desc = !th.classList.contains("sorted-desc");
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
    th.classList.add(desc ? "sorted-desc" : "sorted-asc");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === y) { return 0; }
      var r = (typeof x === typeof y) ? (x < y ? -1 : 1) : (typeof x === "number" ? -1 : 1);
      return desc ? -r : r;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var head = table.tHead;
    if (!head) { return; }
    Array.prototype.forEach.call(head.rows[0].cells, function (th, i) {
      th.addEventListener("click", function () { sortBy(table, i, th); });
    });
  });
  document.documentElement.setAttribute("data-report-ready", "1");
})();
