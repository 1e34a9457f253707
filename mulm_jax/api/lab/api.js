// Calls to the server's public API: the key (kept in sessionStorage, sent as a Bearer token), JSON requests,
// and Server-Sent Events read with fetch (EventSource cannot send the key).

const KEY_ITEM = "mulm-lab-api-key";

// An error answer of the API: the server's message, the HTTP status and the error's type.
class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.type = error.type || null;
  }
}

export const apiKey = {
  get: () => sessionStorage.getItem(KEY_ITEM) || "",
  set: (key) => (key ? sessionStorage.setItem(KEY_ITEM, key) : sessionStorage.removeItem(KEY_ITEM)),
};

// Listeners called with the ApiError of every 401 (the page then asks for a key).
const unauthorizedListeners = [];
export function onUnauthorized(listener) {
  unauthorizedListeners.push(listener);
}

async function send(method, path, body, signal) {
  const headers = {};
  const key = apiKey.get();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let error = {message: `${response.status} ${response.statusText}`};
    try {
      error = (await response.json()).error || error;
    } catch (_) { /* not a JSON body: keep the status line */ }
    const failure = new ApiError(response.status, error);
    if (response.status === 401) unauthorizedListeners.forEach((listener) => listener(failure));
    throw failure;
  }
  return response;
}

export async function get(path, signal) {
  return (await send("GET", path, undefined, signal)).json();
}

export async function post(path, body = {}, signal) {
  return (await send("POST", path, body, signal)).json();
}

// Reads an SSE response as it arrives, calling onEvent({event, data}) for each event (data: parsed JSON, or the
// raw text such as "[DONE]"). An `error` object sent mid-stream is thrown as an ApiError.
export async function stream(method, path, body, onEvent, signal) {
  const response = await send(method, path, body, signal);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const parsed = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (parsed.data && parsed.data.error) throw new ApiError(null, parsed.data.error);  // no status of its own
      onEvent(parsed);
    }
  }
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  const text = data.join("\n");
  try {
    return {event, data: JSON.parse(text)};
  } catch (_) {
    return {event, data: text};
  }
}

// The request as a curl command, so that whatever the page shows can be had from a script.
export function asCurl(method, path, body) {
  const parts = [`curl -N -X ${method} ${location.origin}${path}`];
  if (apiKey.get()) parts.push(`-H "Authorization: Bearer $MULM_API_KEY"`);
  if (body !== undefined) parts.push(`-H "Content-Type: application/json" -d '${JSON.stringify(body).replaceAll("'", "'\\''")}'`);
  return parts.join(" \\\n  ");
}
