// The dashboard's only script: ask before a form that changes something is posted.
// Forms work without it; it only adds the question a form names in data-confirm.
document.addEventListener("submit", (event) => {
  const question = event.target.dataset && event.target.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
