// What tests/test_ts_client.py starts for these tests: real services on loopback, real Redis and
// Postgres, and a worker. Run them through pytest (make test), which sets these variables.
import http from "node:http";
import net from "node:net";

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through pytest (tests/test_ts_client.py)`);
  return value;
}

export const env = {
  /** The service, test registry, Redis up, a worker running its jobs. */
  api: required("MB_API_URL"),
  /** The same queue and database through a service that cannot reach Redis. */
  apiNoRedis: required("MB_API_URL_NO_REDIS"),
  /** The service with the real job registry (typed client, events); no worker. */
  apiReal: required("MB_API_URL_REAL"),
  /** A port nothing listens on. */
  apiDown: required("MB_API_URL_DOWN"),
  token: required("MB_TOKEN"),
  tokenRecordOnly: required("MB_TOKEN_RECORD_ONLY"),
  databaseUrl: required("MB_DATABASE_URL"),
  queue: required("MB_QUEUE"),
  run: required("MB_RUN"),
};

/** The jobs of the runner's test registry (tests/sample_jobs.py) this suite uses. */
export interface TestJobs {
  record: { key: string };
  record_spooled: { key: string };
  record_rejecting: { key: string };
  refuse: { reason: string };
}

let counter = 0;
/** A key unique to this run; pytest checks afterwards that each key ran exactly once. */
export function key(label: string): string {
  counter += 1;
  return `ts-${env.run}-${label}-${counter}`;
}

/** A server that accepts connections and never answers (a hung API). */
export async function silentServer(): Promise<{ url: string; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/**
 * A front for the real API that misbehaves on the first calls, as a flaky network or proxy
 * would: `plan` says, per request, "drop" (forward it, then cut the connection before the
 * answer reaches the client: the request took effect but the reply is lost), "502" (answer
 * 502 without forwarding) or "pass".
 */
export async function flakyFront(
  target: string,
  plan: Array<"drop" | "502" | "pass">,
): Promise<{ url: string; seen: string[]; close: () => Promise<void> }> {
  const seen: string[] = [];
  const server = http.createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const step = plan[seen.length] ?? "pass";
    seen.push(String(req.headers["idempotency-key"] ?? ""));
    if (step === "502") {
      res.writeHead(502, { "content-type": "text/plain" }).end("bad gateway");
      return;
    }
    const headers: Record<string, string> = {};
    for (const name of ["authorization", "content-type", "idempotency-key", "traceparent"]) {
      const value = req.headers[name];
      if (typeof value === "string") headers[name] = value;
    }
    const upstream = await fetch(target + req.url, { method: req.method ?? "GET", headers, body: body.length ? body : null });
    const text = await upstream.text();
    if (step === "drop") {
      req.socket.destroy();
      return;
    }
    res.writeHead(upstream.status, { "content-type": "application/json" }).end(text);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
