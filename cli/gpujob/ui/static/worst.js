// gpujob ui, the worst utterances: sort by WER, CER or duration (highest first), filter by source.
(function () {
  "use strict";
  var table = document.getElementById("worst"), tools = document.getElementById("worst-tools");
  if (!table || !tools) return;
  tools.hidden = false;
  var body = table.tBodies[0], source = document.getElementById("w-source"), key = "wer";
  function apply() {
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) { return Number(b.getAttribute("data-" + key)) - Number(a.getAttribute("data-" + key)); });
    rows.forEach(function (tr) {
      tr.hidden = !!(source && source.value && tr.getAttribute("data-source") !== source.value);
      body.appendChild(tr);
    });
  }
  Array.prototype.forEach.call(tools.querySelectorAll("button[data-sort]"), function (b) {
    b.addEventListener("click", function () {
      key = b.getAttribute("data-sort");
      Array.prototype.forEach.call(tools.querySelectorAll("button[data-sort]"), function (o) { o.setAttribute("aria-pressed", String(o === b)); });
      apply();
    });
  });
  if (source) source.addEventListener("change", apply);
})();
