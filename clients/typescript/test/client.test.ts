import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import pg from "pg";

import {
  ApiError,
  ApiUnavailableError,
  AuthError,
  EnqueueRefusedError,
  JobFailedError,
  JobsClient,
  ValidationError,
} from "../src/index.ts";
import { env, flakyFront, key, silentServer, type TestJobs } from "./env.ts";

const TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

const api = new JobsClient<TestJobs>({ baseUrl: env.api, token: env.token });
const noRedis = new JobsClient<TestJobs>({ baseUrl: env.apiNoRedis, token: env.token });
const pool = new pg.Pool({ connectionString: env.databaseUrl, max: 2 });

after(async () => {
  await pool.end();
});

function outboxClient(baseUrl: string, extra: Partial<ConstructorParameters<typeof JobsClient>[0]> = {}): JobsClient<TestJobs> {
  return new JobsClient<TestJobs>({
    baseUrl,
    token: env.token,
    outbox: pool,
    queue: env.queue,
    retries: 2,
    backoffMs: 10,
    ...extra,
  });
}

describe("through the API", { timeout: 30_000 }, () => {
  test("queued: the job runs in a worker and its result comes back", async () => {
    const k = key("queued");
    const handle = await api.enqueue("record", { key: k });
    assert.equal(handle.mode, "queued");
    assert.equal(handle.via, "api");
    assert.equal(handle.duplicate, false);
    assert.match(handle.jobId, /^[0-9a-f]{32}$/);
    assert.deepEqual(await api.waitForResult(handle.jobId), { key: k, mode: "queued" });
    const status = await api.status(handle.jobId);
    assert.equal(status.status, "complete");
    assert.equal(status.name, "record");
    assert.equal(status.tries, 1);
  });

  test("wait: the result is in the answer", async () => {
    const k = key("wait");
    const handle = await api.enqueue<"record", { key: string }>("record", { key: k }, { wait: 10 });
    assert.equal(handle.status, "complete");
    assert.deepEqual(handle.result, { key: k, mode: "queued" });
  });

  test("a job id given twice makes one job", async () => {
    const jobId = `ts-${env.run}-dup`;
    const first = await api.enqueue("record", { key: key("dup") }, { jobId });
    const second = await api.enqueue("record", { key: key("dup-again") }, { jobId });
    assert.equal(first.jobId, jobId);
    assert.deepEqual([first.duplicate, second.duplicate], [false, true]);
    await api.waitForResult(jobId);
  });

  test("invalid arguments: ValidationError names the field; nothing is enqueued, not even to the outbox", async () => {
    const client = outboxClient(env.api);
    await assert.rejects(
      client.enqueue("record", { key: 5 } as unknown as { key: string }, { jobId: `ts-${env.run}-invalid` }),
      (error: unknown) => {
        assert.ok(error instanceof ValidationError);
        assert.equal(error.status, 422);
        assert.equal(error.code, "invalid_arguments");
        assert.deepEqual(error.fields, [{ field: "args.key", problem: "Input should be a valid string" }]);
        assert.match(error.message, /record: argument 'key': Input should be a valid string \(got 5\)/);
        return true;
      },
    );
    assert.equal((await api.status(`ts-${env.run}-invalid`)).status, "not_found");
  });

  test("a bad token is refused with AuthError (401), a token not allowed the job with 403", async () => {
    const wrong = new JobsClient<TestJobs>({ baseUrl: env.api, token: "not-the-token-0000000000" });
    await assert.rejects(wrong.enqueue("record", { key: key("auth") }), (error: unknown) => {
      assert.ok(error instanceof AuthError);
      assert.equal(error.status, 401);
      return true;
    });
    const scoped = new JobsClient<TestJobs>({ baseUrl: env.api, token: env.tokenRecordOnly });
    await assert.rejects(scoped.enqueue("refuse", { reason: "x" }), (error: unknown) => {
      assert.ok(error instanceof AuthError);
      assert.equal(error.status, 403);
      return true;
    });
  });

  test("a body over the service's limit: 413 body_too_large", async () => {
    await assert.rejects(api.enqueue("record", { key: "x".repeat(5 * 1024 * 1024) }), (error: unknown) => {
      assert.ok(error instanceof ApiError);
      assert.equal(error.status, 413);
      assert.equal(error.code, "body_too_large");
      return true;
    });
  });

  test("enqueueMany: one call, one entry per job in order, ids kept", async () => {
    const keys = [key("batch"), key("batch"), key("batch")];
    const batch = await api.enqueueMany("record", [
      { args: { key: keys[0]! } },
      { args: { key: keys[1]! }, jobId: `ts-${env.run}-batch-1` },
      { args: { key: keys[2]! } },
    ]);
    assert.equal(batch.via, "api");
    assert.deepEqual(batch.counts, { queued: 3, duplicate: 0 });
    assert.equal(batch.jobs[1]!.jobId, `ts-${env.run}-batch-1`);
    const results = await Promise.all(batch.jobs.map((j) => api.waitForResult<{ key: string }>(j.jobId)));
    assert.deepEqual(results.map((r) => r.key), keys);
  });

  test("a failed job: waitForResult throws JobFailedError with the job's error", async () => {
    const handle = await api.enqueue("refuse", { reason: `no-${env.run}` });
    await assert.rejects(api.waitForResult(handle.jobId), (error: unknown) => {
      assert.ok(error instanceof JobFailedError);
      assert.equal(error.errorType, "PermanentError");
      assert.equal(error.errorMessage, `refused: no-${env.run}`);
      assert.equal(error.kind, "permanent");
      return true;
    });
  });

  test("traceparent travels with the job (pytest checks the job's log line)", async () => {
    const handle = await api.enqueue("record", { key: key("traced") }, { jobId: `ts-traced-${env.run}`, traceparent: TRACEPARENT });
    await api.waitForResult(handle.jobId);
  });

  test("cancel: a deferred job is removed and reports cancelled; a second cancel finds it over", async () => {
    const handle = await api.enqueue("record", { key: key("cancel") }, { deferBy: 3600, queue: "bulk" });
    assert.equal(await api.cancel(handle.jobId), "cancelled");
    const status = await api.status(handle.jobId);
    assert.equal(status.status, "cancelled");
    assert.equal(status.queue, "bulk");
    assert.equal(await api.cancel(handle.jobId), "finished");
    assert.equal(await api.cancel("no-such-job-" + key("x")), "not_found");
    await assert.rejects(api.waitForResult(handle.jobId), JobFailedError);
  });

  test("pause and resume a queue", async () => {
    assert.deepEqual(await api.pauseQueue("bulk"), { queue: "bulk", paused: true, wasPaused: false });
    assert.deepEqual(await api.resumeQueue("bulk"), { queue: "bulk", paused: false, wasPaused: true });
  });

  test("validate answers the arguments as the job will see them", async () => {
    assert.deepEqual(await api.validate("record", { key: "v" }), { key: "v" });
  });
});

describe("when Redis is down", { timeout: 30_000 }, () => {
  test("the service runs the job inline", async () => {
    const k = key("inline");
    const handle = await noRedis.enqueue("record", { key: k }, { wait: true });
    assert.equal(handle.mode, "inline");
    assert.equal(handle.status, "complete");
    assert.deepEqual(handle.result, { key: k, mode: "inline" });
  });

  test("a spool-policy job is spooled, then relayed to the queue and run once", async () => {
    const k = key("spooled");
    const handle = await noRedis.enqueue("record_spooled", { key: k });
    assert.equal(handle.mode, "spooled");
    assert.equal(handle.via, "api");
    // The worker's relay moves it to Redis (it reaches Redis; the API process does not).
    assert.deepEqual(await api.waitForResult(handle.jobId), { key: k, mode: "queued" });
  });

  test("status of a job Postgres does not know either: unknown, answered at once", async () => {
    const started = Date.now();
    const report = await noRedis.status(`ts-${env.run}-nowhere`);
    assert.equal(report.status, "unknown");
    assert.ok(Date.now() - started < 1_000, `took ${Date.now() - started} ms`);
  });

  test("a job that must not run inline or wait is refused: EnqueueRefusedError, no outbox write", async () => {
    const client = outboxClient(env.apiNoRedis);
    const jobId = `ts-${env.run}-rejected`;
    await assert.rejects(client.enqueue("record_rejecting", { key: key("rejected") }, { jobId }), EnqueueRefusedError);
    assert.equal((await api.status(jobId)).status, "not_found");
  });
});

describe("when the API is unreachable", { timeout: 30_000 }, () => {
  test("without an outbox: ApiUnavailableError, within the time limit", async () => {
    const client = new JobsClient<TestJobs>({ baseUrl: env.apiDown, token: env.token, timeoutMs: 1_000, backoffMs: 20 });
    const started = Date.now();
    await assert.rejects(client.enqueue("record", { key: key("nowhere") }), (error: unknown) => {
      assert.ok(error instanceof ApiUnavailableError);
      assert.equal(error.attempts, 4);
      assert.match(error.message, /ECONNREFUSED/);
      return true;
    });
    assert.ok(Date.now() - started < 1_500);
  });

  test("the outbox takes the job, the relay delivers it, and it runs exactly once", async () => {
    const client = outboxClient(env.apiDown);
    const k = key("outbox");
    const handle = await client.enqueue("record", { key: k });
    assert.deepEqual([handle.via, handle.mode, handle.duplicate], ["outbox", "spooled", false]);
    assert.deepEqual(await api.waitForResult(handle.jobId), { key: k, mode: "queued" });
    // The same job written again (a retried request): the relay finds it in Redis and drops it.
    const again = await client.enqueue("record", { key: k }, { jobId: handle.jobId });
    assert.equal(again.via, "outbox");
    await api.waitForResult(handle.jobId); // "spooled" until the relay has taken the second copy
    const status = await api.status(handle.jobId);
    assert.deepEqual([status.status, status.tries], ["complete", 1]); // and pytest checks it ran once
  });

  test("the outbox delivers to the queue asked for", async () => {
    const client = outboxClient(env.apiDown);
    const k = key("outbox-queue");
    const handle = await client.enqueue("record", { key: k }, { queue: "critical" });
    assert.equal(handle.via, "outbox");
    assert.deepEqual(await api.waitForResult(handle.jobId), { key: k, mode: "queued" });
    assert.equal((await api.status(handle.jobId)).queue, "critical");
    await assert.rejects(client.enqueue("record", { key: k }, { queue: "Not A Queue" }), TypeError);
  });

  test("enqueueMany falls back to the outbox as one write", async () => {
    const client = outboxClient(env.apiDown);
    const keys = [key("outbox-batch"), key("outbox-batch")];
    const batch = await client.enqueueMany("record", keys.map((k) => ({ args: { key: k } })));
    assert.equal(batch.via, "outbox");
    assert.deepEqual(batch.counts, { spooled: 2, duplicate: 0 });
    const results = await Promise.all(batch.jobs.map((j) => api.waitForResult<{ key: string }>(j.jobId)));
    assert.deepEqual(results.map((r) => r.key), keys);
  });

  test("a hung API: each attempt and the whole call are bounded, then the outbox", async () => {
    const silent = await silentServer();
    try {
      const bare = new JobsClient<TestJobs>({ baseUrl: silent.url, token: env.token, timeoutMs: 800, attemptTimeoutMs: 200, backoffMs: 10 });
      let started = Date.now();
      await assert.rejects(bare.enqueue("record", { key: key("hung") }), ApiUnavailableError);
      assert.ok(Date.now() - started < 1_100, `took ${Date.now() - started} ms`);
      // Five attempts of 200 ms, then the outbox, all within the call's 3 s.
      const withOutbox = outboxClient(silent.url, { timeoutMs: 3_000, attemptTimeoutMs: 200, retries: 4 });
      const k = key("hung-outbox");
      started = Date.now();
      const handle = await withOutbox.enqueue("record", { key: k });
      assert.ok(Date.now() - started < 3_200, `took ${Date.now() - started} ms`);
      assert.equal(handle.via, "outbox");
      assert.deepEqual(await api.waitForResult(handle.jobId), { key: k, mode: "queued" });
    } finally {
      await silent.close();
    }
  });

  test("a lost reply and a 502 are retried with the same job id: one job", async () => {
    const front = await flakyFront(env.api, ["drop", "502", "pass"]);
    try {
      const client = new JobsClient<TestJobs>({ baseUrl: front.url, token: env.token, backoffMs: 10 });
      const k = key("retried");
      const handle = await client.enqueue("record", { key: k });
      assert.equal(front.seen.length, 3);
      assert.deepEqual(new Set(front.seen), new Set([handle.jobId]));
      assert.equal(handle.duplicate, true); // the first attempt did enqueue it; its reply was lost
      assert.deepEqual(await api.waitForResult(handle.jobId), { key: k, mode: "queued" });
    } finally {
      await front.close();
    }
  });
});

describe("the generated types", { timeout: 30_000 }, () => {
  test("the default client is typed by the registry's jobs", async () => {
    const typed = new JobsClient({ baseUrl: env.apiReal, token: env.token });
    const handle = await typed.enqueue("ping", { message: "typed" });
    assert.equal(handle.mode, "queued");
    assert.equal((await typed.status(handle.jobId)).status, "queued"); // no worker on this queue
    const schema = await typed.listJobs();
    assert.ok("ping" in (schema["jobs"] as object));
    if (process.env["NEVER"]) {
      // Compile-time checks: tsc fails the build if these stop being errors.
      // @ts-expect-error message must be a string
      await typed.enqueue("ping", { message: 1 });
      // @ts-expect-error not a registered job
      await typed.enqueue("pong", {});
      // @ts-expect-error send_email needs a message
      await typed.enqueue("send_email", {});
    }
  });

  test("trackEvents: accepted and refused counts, with reasons", async () => {
    const typed = new JobsClient({ baseUrl: env.apiReal, token: env.token });
    const result = await typed.trackEvents([
      { type: "stream", artist_id: "a1", track_id: "t1", source: "spotify" },
      { type: "stream", artist_id: "a1", source: "spotify" },
      { type: "page_view", artist_id: "a1", source: "web" },
    ]);
    assert.equal(result.accepted, 2);
    assert.equal(result.refused, 1);
    assert.equal(result.errors[0]!.index, 1);
    assert.match(result.errors[0]!.reason, /track_id/);
    assert.equal(result.storedIn, "redis");
  });
});
