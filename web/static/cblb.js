// cblb web page: show refusals htmx does not swap (401, 400/403 CSRF, 5xx) in one banner.
(function () {
  function show(text) {
    var el = document.getElementById("alert");
    if (!el) return;
    el.textContent = text;
    el.hidden = !text;
  }
  document.addEventListener("htmx:responseError", function (ev) {
    var xhr = ev.detail.xhr;
    var body = (xhr.responseText || "").replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim();
    if (xhr.status === 401) {
      show("Your access token is no longer accepted: reload the page to log in again.");
    } else {
      show("The server refused the request (" + xhr.status + "): " + body.slice(0, 300));
    }
  });
  document.addEventListener("htmx:sendError", function () {
    show("The cblb web server cannot be reached; is `cblb web` still running?");
  });
  document.addEventListener("htmx:afterRequest", function (ev) {
    if (ev.detail.successful) show("");
  });
})();
