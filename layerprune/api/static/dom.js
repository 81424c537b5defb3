// Building DOM and SVG nodes without innerHTML (API data is never parsed as markup).

export const $ = (sel) => document.querySelector(sel);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function progressBar(p) {
  const bar = el("div", { class: "progress" }, el("div"));
  bar.firstChild.style.width = Math.round((p || 0) * 100) + "%";
  return bar;
}

export function setConn(text, bad) {
  const c = $("#conn");
  c.textContent = text;
  c.className = bad ? "error" : "muted";
}
