// opsagent console: confirm before consequential buttons; refresh pages that ask for it
// (data-refresh seconds on <body>) unless the user is typing in a form.
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) { event.preventDefault(); }
});
(function () {
  var seconds = Number(document.body.dataset.refresh || 0);
  if (!seconds) { return; }
  setInterval(function () {
    var busy = document.activeElement && /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
    var typed = Array.prototype.some.call(document.querySelectorAll("textarea, input[name=reason]"),
                                          function (f) { return f.value !== ""; });
    if (!busy && !typed && document.visibilityState === "visible") { window.location.reload(); }
  }, seconds * 1000);
})();
