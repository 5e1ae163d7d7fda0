// gpujob ui, the jobs table: sort (click a column's head), search (every cell's text), pick rows to compare.
// app.js calls gpujobJobsTools.apply() after every live update, so the user's choices stay.
(function () {
  "use strict";
  var table = document.getElementById("jobs"), tools = document.getElementById("jobs-tools");
  if (!table || !tools) return;
  var body = table.tBodies[0], search = document.getElementById("j-search"), compare = document.getElementById("j-compare");
  var sortBy = null, ascending = true, picked = {};
  tools.hidden = false;

  // a pick box first in every row, and an empty head above them
  var headRow = table.tHead.rows[0];
  var pickHead = document.createElement("th"); pickHead.scope = "col";
  var hidden = document.createElement("span"); hidden.className = "visually-hidden"; hidden.textContent = "Pick";
  pickHead.appendChild(hidden); headRow.insertBefore(pickHead, headRow.firstChild);
  function ensurePick(tr) {
    if (tr.querySelector("td.pick")) return;
    var td = document.createElement("td"); td.className = "pick";
    var box = document.createElement("input"); box.type = "checkbox";
    box.setAttribute("aria-label", "pick job " + tr.getAttribute("data-job"));
    box.checked = !!picked[tr.getAttribute("data-job")];
    box.addEventListener("change", function () {
      if (box.checked) picked[tr.getAttribute("data-job")] = true; else delete picked[tr.getAttribute("data-job")];
      refreshCompare();
    });
    td.appendChild(box); tr.insertBefore(td, tr.firstChild);
  }
  function refreshCompare() { compare.disabled = Object.keys(picked).length < 2; }
  compare.addEventListener("click", function () {
    window.location.href = "/compare?jobs=" + encodeURIComponent(Object.keys(picked).join(","));
  });

  function cellValue(tr, cls) {
    var td = tr.querySelector("td." + cls); if (!td) return "";
    var v = td.getAttribute("data-sort"); if (v === null) v = td.textContent.trim();
    var n = parseFloat(v.replace(/[$%,]/g, ""));
    return /^[-\d.$]/.test(v) && isFinite(n) ? n : v.toLowerCase();
  }
  Array.prototype.forEach.call(headRow.cells, function (th, i) {
    if (i === 0) return;
    var cls = ["id", "name", "backend", "status", "submitted", "progress", "eta", "wer", "runtime", "cost", "sweep"][i - 1];
    th.setAttribute("data-sort-key", cls); th.tabIndex = 0; th.classList.add("sortable");
    function choose() {
      ascending = sortBy === cls ? !ascending : true; sortBy = cls;
      Array.prototype.forEach.call(headRow.cells, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      apply();
    }
    th.addEventListener("click", choose);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); choose(); } });
  });
  search.addEventListener("input", apply);

  function apply() {
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(ensurePick);
    var q = search.value.trim().toLowerCase();
    rows.forEach(function (tr) { tr.hidden = q !== "" && tr.textContent.toLowerCase().indexOf(q) === -1; });
    if (sortBy) {
      rows.sort(function (a, b) {
        var x = cellValue(a, sortBy), y = cellValue(b, sortBy);
        var c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
        return ascending ? c : -c;
      });
      rows.forEach(function (tr) { body.appendChild(tr); });
    }
  }
  window.gpujobJobsTools = { apply: apply };
  apply();
})();
