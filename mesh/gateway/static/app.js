// Small progressive enhancements; every page works without it.
"use strict";
(function () {
  var CODE_KEY = "mesh.consent.code";

  function registerWorker() {
    if (!("serviceWorker" in navigator)) return;
    navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(function () {});
  }

  function offlineNotice() {
    var note = document.getElementById("offline");
    if (!note) return;
    var update = function () { note.hidden = navigator.onLine; };
    window.addEventListener("online", update);
    window.addEventListener("offline", update);
    update();
  }

  function consentCode() {
    var form = document.getElementById("code-form");
    if (!form) return;
    var params = new URLSearchParams(location.search);
    var list = document.querySelector(".scopes[data-code]");
    var saved = null;
    try { saved = localStorage.getItem(CODE_KEY); } catch (e) {}
    if (list) {
      try { localStorage.setItem(CODE_KEY, list.getAttribute("data-code")); } catch (e) {}
    } else if (!params.get("code") && saved) {
      location.replace("/consent?code=" + encodeURIComponent(saved));
      return;
    }
    var forget = document.getElementById("forget-code");
    if (forget) forget.addEventListener("click", function () {
      try { localStorage.removeItem(CODE_KEY); } catch (e) {}
      location.href = "/consent";
    });
  }

  function ages() {
    var now = Date.now() / 1000;
    document.querySelectorAll(".ago[data-t]").forEach(function (el) {
      var s = Math.max(0, Math.round(now - parseFloat(el.getAttribute("data-t"))));
      if (!el.title) el.title = el.textContent;
      el.textContent = s < 60 ? s + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago"
        : s < 86400 ? Math.round(s / 3600) + " h ago" : Math.round(s / 86400) + " d ago";
    });
  }

  function confirmForms() {
    document.querySelectorAll("form.confirm:not([data-bound])").forEach(function (form) {
      form.setAttribute("data-bound", "");
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.getAttribute("data-confirm"))) ev.preventDefault();
      });
    });
  }

  function typingIn(box) {
    var active = document.activeElement;
    return box.contains(active) && active.tagName !== "BODY" && active.tagName !== "BUTTON";
  }

  function applyParts(parts) {  // {element id: fresh inner HTML} from /crew/updates
    Object.keys(parts).forEach(function (id) {
      var el = document.getElementById(id);
      if (el && !typingIn(el)) el.innerHTML = parts[id];
    });
    ages(); confirmForms();
    var box = document.getElementById("dashboard");
    if (box) box.setAttribute("data-live", String(Date.now()));
  }

  function liveDashboard() {  // server-sent events; polling the page where EventSource is missing
    var box = document.getElementById("dashboard");
    if (!box) return;
    if ("EventSource" in window) {
      var source = new EventSource("/crew/updates");
      source.addEventListener("update", function (ev) {
        try { applyParts(JSON.parse(ev.data)); } catch (e) {}
      });
      return;  // EventSource reconnects by itself (retry: 3 s)
    }
    setInterval(function () {
      if (typingIn(box)) return;
      fetch("/crew", { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) return;
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("dashboard");
          if (fresh) { box.innerHTML = fresh.innerHTML; ages(); confirmForms(); }
        }).catch(function () {});
    }, 5000);
  }

  function liveDrop() {  // /drop/ID: what is left follows the server; a changed order or stock reloads
    var box = document.querySelector("[data-drop-live]");
    if (!box || !("EventSource" in window)) return;
    var status = box.getAttribute("data-status"), open = box.getAttribute("data-open") === "true";
    var source = new EventSource(box.getAttribute("data-drop-live"));
    source.addEventListener("update", function (ev) {
      var fresh;
      try { fresh = JSON.parse(ev.data); } catch (e) { return; }
      var left = document.getElementById("left");
      if (left) left.textContent = fresh.left;
      box.setAttribute("data-live", String(Date.now()));
      if (fresh.status !== status || fresh.open !== open) { source.close(); window.location.reload(); }
    });
  }

  function printButton() {
    var button = document.getElementById("print");
    if (button) button.addEventListener("click", function () { window.print(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    registerWorker(); offlineNotice(); consentCode(); ages(); confirmForms(); liveDashboard(); liveDrop(); printButton();
  });
})();
