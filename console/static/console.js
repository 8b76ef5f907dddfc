// The page's only script: confirm dialogs for destructive forms and the
// Copy button of a shown key. Everything else works without it.
"use strict";

document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) {
    return;
  }
  const source = document.getElementById(button.dataset.copy);
  const status = button.closest("section").querySelector(".copy-status");
  try {
    await navigator.clipboard.writeText(source.textContent.trim());
    status.textContent = "Copied to the clipboard.";
  } catch (error) {
    // No clipboard access (e.g. a page not served over HTTPS): select the
    // key so that the person can copy it themselves.
    window.getSelection().selectAllChildren(source);
    status.textContent = "Press Ctrl+C (or ⌘C) to copy the selected key.";
  }
});
