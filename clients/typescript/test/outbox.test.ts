import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";

import { JobsClient } from "../src/index.ts";
import { env, key, type TestJobs } from "./env.ts";

const pool = new pg.Pool({ connectionString: env.databaseUrl, max: 3 });
const api = new JobsClient<TestJobs>({ baseUrl: env.api, token: env.token });
// The API is not needed to write in a transaction: point at nothing to show it.
const client = new JobsClient<TestJobs>({ baseUrl: env.apiDown, token: env.token, queue: env.queue });

after(async () => {
  await pool.end();
});

async function settled(jobId: string): Promise<string> {
  await new Promise((resolve) => setTimeout(resolve, 300)); // a committed job would be relayed by now
  return (await api.status(jobId)).status;
}

describe("enqueueInTransaction", { timeout: 30_000 }, () => {
  test("node-postgres: queued when the transaction commits, with the user's row", async () => {
    const k = key("tx-commit");
    const conn = await pool.connect();
    let jobId: string;
    try {
      await conn.query("BEGIN");
      await conn.query("CREATE TEMP TABLE signup (email text) ON COMMIT DROP");
      await conn.query("INSERT INTO signup VALUES ($1)", ["zoe@example.com"]);
      const handle = await client.enqueueInTransaction(conn, "record", { key: k });
      assert.deepEqual([handle.mode, handle.via, handle.duplicate], ["spooled", "outbox", false]);
      jobId = handle.jobId;
      assert.equal(await settled(jobId), "not_found"); // invisible until commit
      await conn.query("COMMIT");
    } finally {
      conn.release();
    }
    assert.deepEqual(await api.waitForResult(jobId), { key: k, mode: "queued" });
  });

  test("node-postgres: a rolled-back transaction leaves no job", async () => {
    const conn = await pool.connect();
    const jobId = `ts-${env.run}-rolled-back`;
    try {
      await conn.query("BEGIN");
      await client.enqueueInTransaction(conn, "record", { key: key("tx-rollback") }, { jobId });
      await conn.query("ROLLBACK");
    } finally {
      conn.release();
    }
    assert.equal(await settled(jobId), "not_found");
  });

  test("a pool is refused: it cannot hold the caller's transaction", async () => {
    await assert.rejects(client.enqueueInTransaction(pool, "record", { key: "x" }), /not a pool/);
  });

  test("Drizzle: inside db.transaction, committed or rolled back with it", async () => {
    const db = drizzle(pool);
    const k = key("drizzle");
    const handle = await db.transaction(async (tx) => client.enqueueInTransaction(tx, "record", { key: k }));
    assert.equal(handle.mode, "spooled");
    assert.deepEqual(await api.waitForResult(handle.jobId), { key: k, mode: "queued" });

    const jobId = `ts-${env.run}-drizzle-rolled-back`;
    await assert.rejects(
      db.transaction(async (tx) => {
        await client.enqueueInTransaction(tx, "record", { key: key("drizzle-rollback") }, { jobId });
        tx.rollback();
      }),
      /Rollback/,
    );
    assert.equal(await settled(jobId), "not_found");
  });

  test("validate: true checks the arguments with the API first", async () => {
    const checking = new JobsClient<TestJobs>({ baseUrl: env.api, token: env.token, queue: env.queue });
    const conn = await pool.connect();
    try {
      await conn.query("BEGIN");
      await assert.rejects(
        checking.enqueueInTransaction(conn, "record", { key: 1 } as unknown as { key: string }, { validate: true }),
        /argument 'key'/,
      );
      await conn.query("ROLLBACK");
    } finally {
      conn.release();
    }
  });

  test("a deferred job keeps its start time through the spool", async () => {
    const k = key("tx-deferred");
    const conn = await pool.connect();
    let jobId: string;
    const started = Date.now();
    try {
      await conn.query("BEGIN");
      jobId = (await client.enqueueInTransaction(conn, "record", { key: k }, { deferBy: 1 })).jobId;
      await conn.query("COMMIT");
    } finally {
      conn.release();
    }
    assert.deepEqual(await api.waitForResult(jobId), { key: k, mode: "queued" });
    assert.ok(Date.now() - started >= 1_000, "ran before its time");
  });
});
