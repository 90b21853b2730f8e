// Offline fallback: keep the pages, thumbnails and the current release's small files, so an
// attendee's browser keeps showing them when the node or the Wi-Fi is gone.
// Network first for everything (so a withdrawn consent takes effect at once while online), the
// cache only when the node does not answer. A 404/410 from the node (withdrawn consent, expiry)
// deletes the cached copy.
"use strict";
var CACHE = "mesh-offline-v1";
var NETWORK_TIMEOUT_MS = 3000;
var CACHE_BYTES_MAX = 2 * 1024 * 1024;

self.addEventListener("install", function (event) {
  event.waitUntil(precache().catch(function () {}).then(function () { return self.skipWaiting(); }));
});

self.addEventListener("activate", function (event) {
  event.waitUntil(self.clients.claim());
});

self.addEventListener("message", function (event) {
  if (event.data === "refresh") event.waitUntil(precache().catch(function () {}));
});

function precache() {
  return fetch("/offline.json", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (list) {
    return caches.open(CACHE).then(function (cache) {
      var urls = list.pages.concat(list.thumbs, list.files);
      return Promise.all(urls.map(function (url) {
        return fetch(url, { cache: "no-cache" }).then(function (response) {
          if (response.ok && response.status === 200) return cache.put(url, response);
          if (response.status === 404 || response.status === 410) return cache.delete(url);
        }).catch(function () {});
      }));
    });
  });
}

function withTimeout(promise, ms) {
  return new Promise(function (resolve, reject) {
    var timer = setTimeout(function () { reject(new Error("timeout")); }, ms);
    promise.then(function (v) { clearTimeout(timer); resolve(v); }, function (e) { clearTimeout(timer); reject(e); });
  });
}

function cacheable(request, response) {
  if (!response || response.status !== 200 || response.type !== "basic") return false;
  var length = parseInt(response.headers.get("content-length") || "0", 10);
  return length <= CACHE_BYTES_MAX;
}

function networkFirst(request) {
  return caches.open(CACHE).then(function (cache) {
    return withTimeout(fetch(request), NETWORK_TIMEOUT_MS).then(function (response) {
      if (cacheable(request, response)) cache.put(request, response.clone());
      else if (response.status === 404 || response.status === 410) cache.delete(request);
      return response;
    }).catch(function () {
      return cache.match(request, { ignoreSearch: false }).then(function (hit) {
        return hit || cache.match("/").then(function (home) {
          return home || new Response("Offline, and this page was not kept.", { status: 503 });
        });
      });
    });
  });
}

self.addEventListener("fetch", function (event) {
  var request = event.request;
  var url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  if (request.headers.has("range")) return;  // media seeking goes straight to the node
  if (url.pathname.indexOf("/crew") === 0 || url.pathname.indexOf("/api/") === 0 ||
      url.pathname === "/metrics" || url.pathname === "/offline.json") return;
  event.respondWith(networkFirst(request));
});
