// Tables of rows that can be picked with the mouse or the keyboard (Enter on a focused row clicks it).

const wired = new WeakSet();

// Fills `element` (a <table>) with a header row (text or nodes) and one row per entry of `rows` (arrays of text or
// nodes); each row carries data-index, its position in `rows`.
export function table(element, headers, rows, empty) {
  if (!wired.has(element)) {
    element.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && event.target.matches("tr[data-index]")) event.target.click();
    });
    wired.add(element);
  }
  const head = document.createElement("tr");
  for (const title of headers) {
    const th = document.createElement("th");
    th.append(title);
    head.append(th);
  }
  const body = rows.map((cells, index) => {
    const tr = document.createElement("tr");
    tr.dataset.index = String(index);
    tr.tabIndex = 0;
    for (const cell of cells) {
      const td = document.createElement("td");
      td.append(cell === null || cell === undefined ? "—" : cell);
      tr.append(td);
    }
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = headers.length;
    td.textContent = empty;
    tr.append(td);
    body.push(tr);
  }
  element.replaceChildren(head, ...body);
}
