// BullMQ's side of bench/bench_bullmq.py, written for this project. The benchmark copies this
// file into its scratch folder (where `npm install` put bullmq and ioredis) and runs it there,
// so the bare imports below resolve; nothing of Node's is installed in the repository.
//
//   node bullmq_driver.mjs worker  REDIS_URL QUEUE CONCURRENCY
//   node bullmq_driver.mjs queue   REDIS_URL QUEUE
//   node bullmq_driver.mjs enqueue REDIS_URL QUEUE CALLERS COUNT WARMUP
//
// Every command prints "ready" once connected. `queue` then takes one command a line on stdin
// ("fill JOB COUNT", "pause", "resume", "quit") and answers each with a JSON line; `enqueue`
// waits for one line before its measured part, so the Python side can read Redis's counters in
// between, and prints its result as a JSON line. Jobs: "noop" does nothing, "sleep10" waits
// 10 ms, like bench/jobs.py.

import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";
import { once } from "node:events";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";

const [command, url, queueName, ...rest] = process.argv.slice(2);

// One ioredis connection per Queue or Worker, as an app would create it. BullMQ requires
// maxRetriesPerRequest: null for connections that block (the worker's), and accepts it anywhere.
function connect() {
  return new IORedis(url, { maxRetriesPerRequest: null });
}

function say(value) {
  process.stdout.write((typeof value === "string" ? value : JSON.stringify(value)) + "\n");
}

async function go() {
  say("ready");
  await once(process.stdin, "data");
}

async function processor(job) {
  if (job.name === "sleep10") {
    await sleep(10);
  }
}

async function runWorker(concurrency) {
  const worker = new Worker(queueName, processor, { connection: connect(), concurrency });
  worker.on("error", (err) => process.stderr.write(`worker error: ${err}\n`));
  await worker.waitUntilReady();
  say("ready");
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await worker.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function serveQueue() {
  // One Queue, as an app holds one, driven line by line. A backlog is written with addBulk,
  // BullMQ's bulk enqueue (one MULTI of add scripts), in chunks that keep each one bounded.
  const queue = new Queue(queueName, { connection: connect() });
  await queue.waitUntilReady();
  say("ready");
  for await (const line of createInterface({ input: process.stdin })) {
    const [op, ...args] = line.trim().split(" ");
    const started = performance.now();
    if (op === "fill") {
      const [jobName, count] = [args[0], Number(args[1])];
      for (let start = 0; start < count; start += 1000) {
        const size = Math.min(1000, count - start);
        await queue.addBulk(Array.from({ length: size }, () => ({ name: jobName, data: {} })));
      }
    } else if (op === "pause") {
      await queue.pause();
    } else if (op === "resume") {
      await queue.resume();
    } else if (op === "quit") {
      break;
    } else {
      say({ error: `unknown command ${op}` });
      continue;
    }
    say({ op, seconds: (performance.now() - started) / 1000 });
  }
  await queue.close();
}

async function enqueue(callers, count, warmup) {
  // `callers` async loops, each awaiting its own queue.add calls one after another; 1 caller is
  // the one-at-a-time rate. `warmup` adds first, outside the timing: they connect, load the
  // scripts and let V8 compile the hot path, as in a long-running app (a cold run of 1,000 adds
  // measured a third slower than 5,000).
  const queue = new Queue(queueName, { connection: connect() });
  for (let i = 0; i < warmup; i++) {
    await queue.add("noop", {});
  }
  await go();
  const each = Math.floor(count / callers);
  const started = performance.now();
  await Promise.all(
    Array.from({ length: callers }, async () => {
      for (let i = 0; i < each; i++) {
        await queue.add("noop", {});
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  await queue.close();
  say({ jobs: each * callers, seconds });
}

if (command === "worker") {
  await runWorker(Number(rest[0]));
} else if (command === "queue") {
  await serveQueue();
  process.exit(0);
} else if (command === "enqueue") {
  await enqueue(Number(rest[0]), Number(rest[1]), Number(rest[2]));
  process.exit(0);
} else {
  process.stderr.write(`unknown command ${command}\n`);
  process.exit(2);
}
