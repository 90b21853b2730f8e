// The live player: native HLS (Safari, iOS) or the vendored hls.js; says when the stream is not live.
(function () {
  "use strict";
  var section = document.querySelector("section.live");
  if (!section) return;
  var stream = section.getAttribute("data-stream");
  var video = document.getElementById("player");
  var state = document.getElementById("live-state");
  var source = "/live/" + encodeURIComponent(stream) + ".m3u8";
  var hls = null;

  function say(text) { state.textContent = text; state.hidden = !text; }

  function start() {
    if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = source;
    } else if (window.Hls && window.Hls.isSupported()) {
      hls = new window.Hls({ enableWorker: false, liveSyncDurationCount: 2, liveMaxLatencyDurationCount: 4,
                             lowLatencyMode: false, manifestLoadingRetryDelay: 1000 });
      hls.on(window.Hls.Events.ERROR, function (event, data) {
        if (data.fatal) { hls.destroy(); hls = null; say("The stream is not live right now. Retrying…"); }
      });
      hls.loadSource(source);
      hls.attachMedia(video);
    } else {
      say("This browser cannot play live video.");
      return;
    }
    video.play().catch(function () {});
  }

  function check() {
    fetch("/api/live", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (doc) {
      var row = (doc.streams || []).filter(function (s) { return s.name === stream; })[0];
      if (!row || !row.allowed) { say("This stream is not live right now."); return; }
      if (row.state === "ended") { say("The stream has ended."); return; }
      if (row.held_newest === null) { say("Waiting for the first seconds of video…"); return; }
      say("");
      if (!hls && !video.src) start();
      else if (!hls && !video.canPlayType("application/vnd.apple.mpegurl")) start();
    }).catch(function () { say("This box is unreachable. Retrying…"); });
  }

  check();
  setInterval(check, 3000);
})();
