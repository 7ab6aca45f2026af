// Copy buttons: <button data-copy="#id"> copies the text of the element #id (no inline script, for the CSP).
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button || !navigator.clipboard) return;
  var source = document.querySelector(button.getAttribute("data-copy"));
  if (!source) return;
  navigator.clipboard.writeText(source.innerText.trim()).then(function () {
    var label = button.textContent;
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = label; }, 1500);
  });
});
