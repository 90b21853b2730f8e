// Client-side search over window.MESH_INDEX (written by `mesh export-static`); works from file://.
"use strict";
(function () {
  var index = window.MESH_INDEX || { assets: [], files: [], tags: [] };
  var q = document.getElementById("q"), results = document.getElementById("results");
  var count = document.getElementById("result-count"), tagList = document.getElementById("tags");
  var activeTag = new URLSearchParams(location.search).get("tag") || "";

  function el(name, attrs, text) {
    var node = document.createElement(name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text) node.textContent = text;
    return node;
  }

  function matches(asset, words) {
    var hay = (asset.name + " " + asset.tags.join(" ")).toLowerCase();
    if (activeTag && asset.tags.indexOf(activeTag) < 0) return false;
    return words.every(function (w) { return hay.indexOf(w) >= 0; });
  }

  function render() {
    var words = q.value.toLowerCase().split(/\s+/).filter(Boolean);
    var found = index.assets.filter(function (a) { return matches(a, words); });
    results.textContent = "";
    found.forEach(function (a) {
      var li = el("li"), link = el("a", { href: a.url, "class": "card", "data-cid": a.cid });
      if (a.thumbnail) link.appendChild(el("img", { src: a.thumbnail, alt: a.name, loading: "lazy" }));
      else link.appendChild(el("span", { "class": "ph" }, a.media_type.split("/")[0]));
      link.appendChild(el("span", { "class": "name" }, a.name));
      li.appendChild(link); results.appendChild(li);
    });
    count.textContent = found.length + (found.length === 1 ? " result" : " results") + (activeTag ? " tagged " + activeTag : "");
    tagList.textContent = "";
    index.tags.forEach(function (t) {
      var li = el("li"), a = el("a", { href: "#", "class": "tag" + (t.tag === activeTag ? " on" : ""), "data-tag": t.tag }, t.tag + " ");
      a.appendChild(el("small", {}, String(t.count)));
      a.addEventListener("click", function (ev) { ev.preventDefault(); activeTag = activeTag === t.tag ? "" : t.tag; render(); });
      li.appendChild(a); tagList.appendChild(li);
    });
  }

  var files = document.getElementById("files");
  index.files.forEach(function (f) {
    var li = el("li"); li.appendChild(el("a", { href: f.url }, f.path)); files.appendChild(li);
  });
  document.getElementById("search").addEventListener("submit", function (ev) { ev.preventDefault(); render(); });
  q.addEventListener("input", render);
  render();
})();
