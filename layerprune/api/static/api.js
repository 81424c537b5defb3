// Talking to the JSON API: the key (sessionStorage, gone when the tab closes) as a Bearer header,
// and the field descriptors (core/units.py FIELDS) that say how each figure is labelled and written.

const KEY_NAME = "layerprune.apiKey";

export function apiKey() { return sessionStorage.getItem(KEY_NAME) || ""; }
export function setApiKey(key) { sessionStorage.setItem(KEY_NAME, key); }
export function forgetApiKey() { sessionStorage.removeItem(KEY_NAME); }

export async function api(method, path, body) {
  const headers = { "Authorization": "Bearer " + apiKey(), "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error((data && data.error && data.error.message) || ("HTTP " + res.status));
    err.status = res.status;
    throw err;
  }
  return data;
}

// {fields: {name: {label, unit, good, format}}, tasks: {name: label}}: public, fetched once.
let fieldsPromise = null;
export function loadFields() {
  if (!fieldsPromise) {
    fieldsPromise = fetch("/dashboard/fields.json").then((r) => {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).catch((e) => { fieldsPromise = null; throw e; });
  }
  return fieldsPromise;
}

export async function downloadLink(jobId, path) {
  const link = await api("POST", "/v1/download-links", { job_id: jobId, path });
  return link.url;
}
