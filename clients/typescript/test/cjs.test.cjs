// The CommonJS build loads with require(), as the platform's esbuild bundle (format: cjs) needs.
const assert = require("node:assert/strict");
const { test } = require("node:test");

test("require() gives the client, the errors and the generated job table", () => {
  const jobs = require("../dist/cjs/index.js");
  assert.equal(typeof jobs.JobsClient, "function");
  assert.equal(typeof jobs.ValidationError, "function");
  assert.equal(jobs.JOBS.send_email.durable, true);
  assert.equal(jobs.SPOOL_CHANNEL, "mb_job_spool");
  const client = new jobs.JobsClient({ baseUrl: "http://127.0.0.1:1" });
  assert.equal(client.baseUrl, "http://127.0.0.1:1");
});
