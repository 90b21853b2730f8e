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
      el.textContent = s < 60 ? s + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago"
        : s < 86400 ? Math.round(s / 3600) + " h ago" : Math.round(s / 86400) + " d ago";
    });
  }

  function confirmForms() {
    document.querySelectorAll("form.confirm").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.getAttribute("data-confirm"))) ev.preventDefault();
      });
    });
  }

  function refreshDashboard() {
    var box = document.getElementById("dashboard");
    if (!box) return;
    setInterval(function () {
      if (box.contains(document.activeElement) && document.activeElement.tagName !== "BODY" &&
          document.activeElement.tagName !== "BUTTON") return;  // someone is typing
      fetch("/crew", { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) return;
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("dashboard");
          if (fresh) { box.innerHTML = fresh.innerHTML; ages(); confirmForms(); }
        }).catch(function () {});
    }, 5000);
  }

  function printButton() {
    var button = document.getElementById("print");
    if (button) button.addEventListener("click", function () { window.print(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    registerWorker(); offlineNotice(); consentCode(); ages(); confirmForms(); refreshDashboard(); printButton();
  });
})();
