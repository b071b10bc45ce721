// js-echo: a Spin JS app (StarlingMonkey via @spinframework/build-tools' j2w), fetch-event style.
// Routes are listed in tests/apps/README.md. The same wasm serves every component of the `multi` app, which tells
// them apart by the WHO environment variable: /.../whoami returns it, and every response carries it as `x-who`.
import { getEnvironment } from "wasi:cli/environment@0.2.3";

// The repeating pattern /big returns (the same as py-spin's).
const BIG_PATTERN = "0123456789abcdef";

function text(status, body, headers = {}) {
  return new Response(body, { status, headers: { "content-type": "text/plain", ...headers } });
}

function env(name) {
  const found = getEnvironment().find(([key]) => key === name);
  return found === undefined ? undefined : found[1];
}

async function handle(request) {
  const url = new URL(request.url);
  const path = url.pathname;

  if (path === "/" || path === "/hello") {
    return text(200, "Hello from JS!");
  }
  if (path === "/echo") {
    // Buffered, so x-body-length is the exact byte count.
    const body = new Uint8Array(await request.arrayBuffer());
    return new Response(body, {
      status: 200,
      headers: {
        "content-type": request.headers.get("content-type") ?? "application/octet-stream",
        "x-body-length": String(body.byteLength),
      },
    });
  }
  if (path === "/echo-stream") {
    // Streamed straight through: the response starts before the request body has ended.
    return new Response(request.body, {
      status: 200,
      headers: { "content-type": request.headers.get("content-type") ?? "application/octet-stream" },
    });
  }
  if (path.startsWith("/status/")) {
    const status = Number.parseInt(path.slice("/status/".length), 10);
    return Number.isNaN(status) ? text(400, "bad status") : text(status, `status ${status}`);
  }
  if (path.endsWith("/headers")) {  // under any route, like /whoami
    return new Response(JSON.stringify(Object.fromEntries(request.headers)), {
      status: 200,
      headers: { "content-type": "application/json" },
    });
  }
  if (path.endsWith("/whoami")) {
    // Any path ending in /whoami: under route "/api/..." the guest still sees the full path ("/api/whoami").
    const who = env("WHO");
    return who === undefined ? text(404, "WHO is not set") : text(200, who);
  }
  if (path === "/env") {
    const value = env(url.searchParams.get("name") ?? "");
    return value === undefined ? text(404, "unset") : text(200, value);
  }
  if (path === "/big") {
    const size = Number.parseInt(url.searchParams.get("bytes") ?? "0", 10);
    const body = BIG_PATTERN.repeat(Math.ceil(size / BIG_PATTERN.length)).slice(0, size);
    return new Response(body, { status: 200, headers: { "content-type": "application/octet-stream" } });
  }
  if (path === "/throw") {
    // A handler that throws before it has a response (issue 16: `wasmtime serve` answers a clean empty 500).
    throw new Error("js-echo was asked to throw");
  }
  if (path === "/throw-after-head") {
    // The head goes out, then the body stream fails: the server can only end the connection.
    let sent = false;
    const body = new ReadableStream({
      pull(controller) {
        if (!sent) {
          sent = true;
          controller.enqueue(new TextEncoder().encode("partial "));
        } else {
          controller.error(new Error("js-echo body stream failed"));
        }
      },
    });
    return new Response(body, { status: 200, headers: { "content-type": "text/plain" } });
  }
  return text(404, "not found");
}

async function handleWithWho(request) {
  const response = await handle(request);
  const who = env("WHO");
  if (who !== undefined) {
    response.headers.set("x-who", who);
  }
  return response;
}

addEventListener("fetch", (event) => event.respondWith(handleWithWho(event.request)));
