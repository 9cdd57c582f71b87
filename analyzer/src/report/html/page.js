// popek HTML report: draws the opcode maps and the engine comparison from
// the data in #popek-data. Text goes in through textContent only.
"use strict";
(function () {
  var D = JSON.parse(document.getElementById("popek-data").textContent);
  var S = D.strings;
  var COL = {};
  D.columns.forEach(function (name, i) { COL[name] = i; });

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function hex(n) { return (n < 16 ? "0" : "") + n.toString(16).toUpperCase(); }
  function field(rec, name) { return S[D.records[rec][COL[name]]]; }
  function cls(rec) { return D.classes[D.records[rec][COL["class"]]]; }
  function chip(c) { return el("span", "chip c-" + c.name, c.label); }

  var select = document.getElementById("view");
  var maps = document.getElementById("maps");
  var unplaced = document.getElementById("unplaced");
  var details = document.getElementById("details");
  var verdicts = document.getElementById("view-theorems");

  D.views.forEach(function (v, i) {
    var o = el("option", null, v.engine + ", mode " + v.mode + ", " + v.config);
    o.value = String(i);
    select.appendChild(o);
  });

  // The mnemonics of a cell, in record order, each once.
  function mnemonics(cell) {
    var seen = {}, out = [];
    cell[3].forEach(function (r) {
      var m = field(r[0], "mnemonic");
      if (!seen[m]) { seen[m] = true; out.push(m); }
    });
    return out;
  }

  function cellTitle(map, cell) {
    var counts = {}, order = [];
    cell[3].forEach(function (r) {
      var c = cls(r[0]).label;
      if (!(c in counts)) { counts[c] = 0; order.push(c); }
      counts[c] += 1;
    });
    var parts = order.map(function (c) { return counts[c] + " " + c; });
    var differ = cell[3].filter(function (r) { return r[1] !== null; }).length;
    var text = map.name + " " + hex(cell[0]) + ": " + cell[3].length + " records: " + parts.join(", ");
    if (differ) text += "; engines differ on " + differ;
    var m = mnemonics(cell);
    return text + "\n" + m.slice(0, 12).join(", ") + (m.length > 12 ? ", ..." : "");
  }

  function grid(v, map) {
    var t = el("table", "opmap");
    t.appendChild(el("caption", null, map.name + " map: " + map.records + " records"));
    var head = el("tr");
    head.appendChild(el("th"));
    for (var c = 0; c < 16; c++) head.appendChild(el("th", null, "x" + c.toString(16).toUpperCase()));
    t.appendChild(head);
    var at = {};
    map.cells.forEach(function (cell) { at[cell[0]] = cell; });
    for (var r = 0; r < 16; r++) {
      var tr = el("tr");
      tr.appendChild(el("th", null, r.toString(16).toUpperCase() + "x"));
      for (var col = 0; col < 16; col++) {
        var cell = at[r * 16 + col];
        var td = el("td", "cell empty");
        if (cell) {
          var differ = cell[3].some(function (x) { return x[1] !== null; });
          td.className = "cell c-" + D.classes[cell[1]].name + (differ ? " disagree" : "");
          td.appendChild(el("span", "mn", S[cell[2]]));
          var others = mnemonics(cell).length - 1;
          if (others > 0) td.appendChild(el("span", "more", "+" + others));
          td.title = cellTitle(map, cell);
          td.tabIndex = 0;
          td.setAttribute("data-opcode", hex(cell[0]));
          td.addEventListener("click", show.bind(null, v, map, cell, td));
          td.addEventListener("keydown", function (e) {
            if (e.key === "Enter" || e.key === " ") { e.preventDefault(); this.click(); }
          });
        }
        tr.appendChild(td);
      }
      t.appendChild(tr);
    }
    t.setAttribute("data-map", map.name);
    return t;
  }

  function recordRow(rec, diff) {
    var tr = el("tr");
    var c = el("td", "class");
    c.appendChild(chip(cls(rec)));
    tr.appendChild(c);
    tr.appendChild(el("td", null, field(rec, "form")));
    tr.appendChild(el("td", null, field(rec, "code")));
    tr.appendChild(el("td", null, field(rec, "bytes")));
    tr.appendChild(el("td", null, field(rec, "encoding")));
    var ev = el("td", null, field(rec, "evidence") || "(no evidence)");
    [["sensitivity", "kinds"], ["deviation", "deviation"], ["iced", "doc_disagreement"],
     ["documented", "documented"], ["notes", "notes"], ["not run", "not_run"]].forEach(function (p) {
      var text = field(rec, p[1]);
      if (text) ev.appendChild(el("span", "extra", p[0] + ": " + text));
    });
    if (diff !== null) {
      var d = D.diffs[diff];
      var other = d[1] === rec ? d[2] : d[1];
      var name = D.engines[d[1] === rec ? 1 : 0];
      ev.appendChild(el("span", "extra", "engines differ in " + S[d[3]] + "; " + name + ": " +
        (other === null ? "no record" : cls(other).label)));
    }
    tr.appendChild(ev);
    return tr;
  }

  function show(v, map, cell, td) {
    var old = maps.querySelector("td.selected");
    if (old) old.classList.remove("selected");
    td.classList.add("selected");
    details.textContent = "";
    details.appendChild(el("h3", null, map.name + " " + hex(cell[0]) + ": " + v.engine + ", mode " + v.mode +
      ", " + v.config + ", " + cell[3].length + " records"));
    var t = el("table");
    var head = el("tr");
    ["class", "form", "code", "bytes", "encoding", "evidence"].forEach(function (h) { head.appendChild(el("th", null, h)); });
    t.appendChild(head);
    cell[3].forEach(function (r) { t.appendChild(recordRow(r[0], r[1])); });
    details.appendChild(t);
  }

  function render(i) {
    var v = D.views[i];
    select.value = String(i);
    verdicts.textContent = "theorem 1 (VMM): " + v.theorem1 + "; theorem 3 (hybrid VMM): " + v.theorem3;
    maps.textContent = "";
    v.maps.forEach(function (m) { maps.appendChild(grid(v, m)); });
    unplaced.textContent = "";
    if (v.unplaced.length) {
      unplaced.appendChild(el("p", "note", v.unplaced.length + " records have no opcode byte and are on no map:"));
      var t = el("table");
      v.unplaced.forEach(function (r) { t.appendChild(recordRow(r, null)); });
      unplaced.appendChild(t);
    }
    details.textContent = "";
    details.appendChild(el("p", "note", "Click a cell to see its records."));
  }

  function fromHash() {
    var key = decodeURIComponent(location.hash.replace(/^#/, ""));
    for (var i = 0; i < D.views.length; i++) if (D.views[i].key === key) return i;
    return 0;
  }

  select.addEventListener("change", function () {
    var v = D.views[Number(select.value)];
    history.replaceState(null, "", "#" + encodeURIComponent(v.key));
    render(Number(select.value));
  });
  window.addEventListener("hashchange", function () { render(fromHash()); });
  if (D.views.length) render(fromHash());

  // The engine comparison: the differences of one (mode, configuration).
  var groupSelect = document.getElementById("diff-group");
  var list = document.getElementById("diff-list");
  if (groupSelect && list) {
    var groups = [], members = {};
    D.diffs.forEach(function (d, i) {
      var g = S[d[0]];
      if (!(g in members)) { members[g] = []; groups.push(g); }
      members[g].push(i);
    });
    groups.forEach(function (g) {
      var o = el("option", null, g + " (" + members[g].length + ")");
      o.value = g;
      groupSelect.appendChild(o);
    });
    var side = function (rec) {
      var td = el("td");
      if (rec === null) { td.textContent = "no record"; return td; }
      td.appendChild(chip(cls(rec)));
      td.appendChild(el("span", "extra", field(rec, "evidence")));
      return td;
    };
    var drawGroup = function (g) {
      list.textContent = "";
      var t = el("table", "diffs");
      var head = el("tr");
      ["form", "code", "differs in", D.engines[0], D.engines[1]].forEach(function (h) { head.appendChild(el("th", null, h)); });
      t.appendChild(head);
      members[g].forEach(function (i) {
        var d = D.diffs[i], any = d[1] !== null ? d[1] : d[2];
        var tr = el("tr", "diff");
        tr.appendChild(el("td", null, field(any, "form")));
        tr.appendChild(el("td", null, field(any, "code")));
        tr.appendChild(el("td", null, S[d[3]]));
        tr.appendChild(side(d[1]));
        tr.appendChild(side(d[2]));
        t.appendChild(tr);
      });
      list.appendChild(t);
    };
    groupSelect.addEventListener("change", function () { drawGroup(groupSelect.value); });
    if (groups.length) drawGroup(groups[0]);
  }
})();
