// The consent page's badge secret: a badge's QR link is /consent?code=CODE#secret=SECRET. The
// fragment never reaches the node; this moves the secret into the page's "Allow" forms, keeps it
// for this tab only (sessionStorage, so the next choice needs no new scan) and drops it from the
// address bar. Without this script the secret can be typed into the form.
"use strict";
(function () {
  var list = document.querySelector(".scopes[data-code]");
  if (!list) return;
  var key = "mesh.consent.secret." + list.getAttribute("data-code");

  function fromFragment() {
    var secret = new URLSearchParams(location.hash.replace(/^#/, "")).get("secret");
    if (!secret) return null;
    history.replaceState(null, "", location.pathname + location.search);
    try { sessionStorage.setItem(key, secret); } catch (e) {}
    return secret;
  }

  function remembered() {
    try { return sessionStorage.getItem(key); } catch (e) { return null; }
  }

  function fill(secret, replace) {
    if (!secret) return;
    document.querySelectorAll('input[name="secret"]').forEach(function (input) {
      if (replace || !input.value) input.value = secret;
    });
  }

  fill(fromFragment() || remembered(), false);
  // The same page opened again from a QR link changes only the fragment: no reload.
  window.addEventListener("hashchange", function () { fill(fromFragment(), true); });
  var forget = document.getElementById("forget-code");
  if (forget) forget.addEventListener("click", function () {
    try { sessionStorage.removeItem(key); } catch (e) {}
  });
})();
