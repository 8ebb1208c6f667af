import { randomBytes, randomUUID } from "node:crypto";

import {
  ApiError,
  ApiUnavailableError,
  AuthError,
  EnqueueRefusedError,
  type FieldProblem,
  JobFailedError,
  JobsError,
  ValidationError,
  WaitTimeoutError,
} from "./errors.ts";
import { JOBS, type JobArgs } from "./jobs.generated.ts";
import { DEFAULT_QUEUE, DEFAULT_SPOOL_TABLE, looksLikePool, type SpoolRow, spoolJobs, type SqlExecutor } from "./outbox.ts";

export const CLIENT_VERSION = "0.1.0";

/** Where the job went: queued in Redis for a worker, run inline in the API process (Redis was
 * unusable), or spooled in Postgres until Redis returns (the job's policy, or the outbox). */
export type Mode = "queued" | "inline" | "spooled";

export interface ClientOptions {
  /** The service's base URL, e.g. `http://127.0.0.1:9400`. */
  baseUrl: string;
  /** A bearer token from the service's `API_TOKENS`. */
  token?: string | undefined;
  /** No call takes longer than this, retries and outbox write included (default 10,000 ms). */
  timeoutMs?: number;
  /** One HTTP attempt's limit (default 2,000 ms). */
  attemptTimeoutMs?: number;
  /** Attempts after the first on connection errors, timeouts and 5xx (default 3). */
  retries?: number;
  /** First retry delay, doubled each retry with ±50% jitter, at most 2,000 ms (default 100 ms). */
  backoffMs?: number;
  /** Where jobs go when the API is unreachable: a node-postgres or Neon pool, or a Drizzle
   * database. Without it an unreachable API throws `ApiUnavailableError`. */
  outbox?: SqlExecutor | undefined;
  /** The runner's spool table (default `jobrunner.job_spool`: the runner's tables live in the
   * schema `DATABASE_SCHEMA` names; give `<schema>.job_spool` if it is not `jobrunner`). */
  spoolTable?: string;
  /** The runner's `QUEUE_NAME` (default `arq:queue`), for jobs written to the outbox: the
   * `default` queue's key; the others are `<QUEUE_NAME>:<name>`. */
  queue?: string;
  /** A `fetch` implementation (default: the global one). */
  fetch?: typeof fetch;
}

export interface CallOptions {
  /** This call's overall limit, instead of the client's `timeoutMs`. */
  timeoutMs?: number;
  /** Abort the call (no outbox write follows an abort). */
  signal?: AbortSignal;
}

export interface EnqueueOptions extends CallOptions {
  /** Your id for the job: enqueueing it again creates nothing (`duplicate: true`). Default: a
   * fresh id, made before the first attempt so retries and the outbox never make a second job. */
  jobId?: string;
  /** Seconds before the job may start; it is never run early. */
  deferBy?: number;
  /** Wait for the result and return it: seconds, or `true` for 30. */
  wait?: boolean | number;
  /** While Redis is down the service runs a job inline before answering (so an accepted job has
   * run); `true` answers at once and runs it in the background of the service process instead. */
  background?: boolean;
  /** The W3C `traceparent` of the request enqueuing the job; the job's log lines carry its trace id. */
  traceparent?: string;
  /** The queue (`critical`, `default`, `bulk`, `ai`...) instead of the one the job names. Jobs
   * whose queue depends on their arguments (`send_email`: password resets are `critical`) get it
   * from the API; written to the outbox they go to `default` unless given here. */
  queue?: string;
}

export interface EnqueueInTransactionOptions {
  jobId?: string;
  deferBy?: number;
  traceparent?: string;
  /** As `EnqueueOptions.queue`. */
  queue?: string;
  /** Check the arguments with the API first (`POST /v1/jobs/{name}/validate`); by default the
   * TypeScript types are the only check, and a job with bad arguments fails in the worker. */
  validate?: boolean;
}

/** A job's error: the exception type, its message, and whether retrying could have helped. */
export interface JobErrorInfo {
  type: string;
  message: string;
  kind: "transient" | "permanent";
}

export interface EnqueueResult<R = unknown> {
  jobId: string;
  name: string;
  mode: Mode;
  /** The id was already taken: nothing new was enqueued. */
  duplicate: boolean;
  /** `api`, or `outbox` when the API was unreachable and the job was written to the spool. */
  via: "api" | "outbox";
  /** With `wait`: complete, failed, or pending (no result within the wait). */
  status?: "complete" | "failed" | "pending";
  result?: R;
  error?: JobErrorInfo;
}

export interface BatchJob<A> {
  args: A;
  jobId?: string;
}

export interface EnqueueManyOptions extends CallOptions {
  deferBy?: number;
  traceparent?: string;
  /** As `EnqueueOptions.queue`. */
  queue?: string;
}

/** What a cancel did: removed a waiting job, asked a running one to stop, found it already
 * over, or found no such job. */
export type CancelOutcome = "cancelled" | "requested" | "finished" | "not_found";

export interface QueueState {
  queue: string;
  paused: boolean;
  /** Whether it was paused before this call. */
  wasPaused: boolean;
}

/** A running job's latest progress report. */
export interface Progress {
  fraction: number;
  message: string | null;
  atMs: number | null;
}

export interface EnqueueManyResult {
  name: string;
  /** One per job, in order. */
  jobs: Array<{ jobId: string; mode: Mode; duplicate: boolean }>;
  /** How many went each way, and how many were duplicates. */
  counts: Record<string, number>;
  via: "api" | "outbox";
}

export type JobState =
  | "spooled"
  | "queued"
  | "deferred"
  | "in_progress"
  | "complete"
  | "failed"
  | "cancelled"
  | "dead"
  | "not_found"
  | "unknown";

export interface JobStatus {
  jobId: string;
  status: JobState;
  /** The job's name. */
  name?: string;
  mode?: string;
  tries?: number;
  result?: unknown;
  error?: JobErrorInfo;
  enqueuedAt?: string;
  startedAt?: string;
  finishedAt?: string;
  /** The queue it is in, or was run from. */
  queue?: string;
  /** While it runs, its latest progress report (if it reports any). */
  progress?: Progress;
  /** The status as the API sent it. */
  raw: Record<string, unknown>;
}

export interface WaitOptions extends CallOptions {
  /** Give up after this long (default 30,000 ms). */
  timeoutMs?: number;
  /** First pause between polls (default 50 ms), growing to 1 s. */
  pollMs?: number;
}

/** An analytics event (see the runner's README). `event_id` and `occurred_at` are filled in
 * before the first attempt when missing, so a retried call stores each event once. */
export interface AnalyticsEvent {
  type: "play" | "stream" | "page_view" | "link_click" | "social_engagement" | "sale";
  artist_id: string;
  source: string;
  track_id?: string | null;
  occurred_at?: string;
  event_id?: string;
  quantity?: number;
  amount_cents?: number | null;
  properties?: Record<string, unknown> | null;
}

export interface TrackResult {
  accepted: number;
  refused: number;
  errors: Array<{ index: number; reason: string; eventId: string | null }>;
  storedIn: "redis" | "memory" | null;
}

interface Answer {
  status: number;
  body: unknown;
}

interface Deadline {
  at: number;
  signal: AbortSignal | undefined;
}

const JOB_ID = /^[\x21-\x7e]{1,200}$/;
const RETRY_CAP_MS = 2_000;
// Answers that are the runner's decision, not an outage: retrying or spooling would defeat them.
const FINAL_CODES = new Set(["enqueue_refused", "events_not_accepted"]);

function newJobId(): string {
  return randomUUID().replaceAll("-", "");
}

function newEventId(): string {
  // The runner's own format: time first (microseconds, hex), so ids arrive in index order.
  return (Date.now() * 1000).toString(16).padStart(13, "0") + randomBytes(9).toString("hex");
}

function checkJobId(jobId: string): string {
  if (!JOB_ID.test(jobId)) {
    throw new TypeError(`jobId ${JSON.stringify(jobId)} must be 1 to 200 printable ASCII characters without spaces`);
  }
  return jobId;
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(done, ms);
    function done(): void {
      signal?.removeEventListener("abort", aborted);
      resolve();
    }
    function aborted(): void {
      clearTimeout(timer);
      reject(signal?.reason);
    }
    signal?.addEventListener("abort", aborted, { once: true });
  });
}

/** `promise`, or a rejection with `error()` once `ms` have passed. */
function within<T>(promise: Promise<T>, ms: number, error: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(error()), Math.max(0, ms));
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

function errorCode(body: unknown): { code: string; message: string; fields: FieldProblem[]; queued: string[] } {
  const error = (body as { error?: Record<string, unknown> } | null)?.error ?? {};
  return {
    code: typeof error["code"] === "string" ? error["code"] : "",
    message: typeof error["message"] === "string" ? error["message"] : "",
    fields: Array.isArray(error["fields"]) ? (error["fields"] as FieldProblem[]) : [],
    queued: Array.isArray(error["queued"]) ? (error["queued"] as string[]) : [],
  };
}

/** The typed error for an answer that is not a success. */
function apiError(answer: Answer): ApiError {
  const { code, message, fields, queued } = errorCode(answer.body);
  const text = message || `HTTP ${answer.status}`;
  if (answer.status === 422) return new ValidationError(answer.status, code, text, fields, answer.body);
  if (answer.status === 401 || answer.status === 403) return new AuthError(answer.status, code, text, fields, answer.body);
  if (code === "enqueue_refused") return new EnqueueRefusedError(answer.status, code, text, queued, answer.body);
  return new ApiError(answer.status, code, text, fields, answer.body);
}

function jobStatus(raw: Record<string, unknown>): JobStatus {
  const text = (key: string): string | undefined => (typeof raw[key] === "string" ? (raw[key] as string) : undefined);
  const out: JobStatus = { jobId: String(raw["job_id"] ?? ""), status: (text("status") ?? "unknown") as JobState, raw };
  const name = text("job");
  if (name !== undefined) out.name = name;
  const mode = text("mode");
  if (mode !== undefined) out.mode = mode;
  if (typeof raw["tries"] === "number") out.tries = raw["tries"];
  if ("result" in raw) out.result = raw["result"];
  if (raw["error"] && typeof raw["error"] === "object") out.error = raw["error"] as JobErrorInfo;
  for (const [key, field] of [
    ["enqueued_at", "enqueuedAt"],
    ["started_at", "startedAt"],
    ["finished_at", "finishedAt"],
  ] as const) {
    const value = text(key);
    if (value !== undefined) out[field] = value;
  }
  const queue = text("queue");
  if (queue !== undefined) out.queue = queue;
  const progress = raw["progress"] as Record<string, unknown> | undefined;
  if (progress && typeof progress === "object" && typeof progress["fraction"] === "number") {
    out.progress = {
      fraction: progress["fraction"],
      message: typeof progress["message"] === "string" ? progress["message"] : null,
      atMs: typeof progress["at_ms"] === "number" ? progress["at_ms"] : null,
    };
  }
  return out;
}

/**
 * A client of the runner's HTTP API (`python -m worker serve`), typed per job by `Jobs`
 * (default: the generated `JobArgs` of every registered job).
 *
 *     const jobs = new JobsClient({ baseUrl: "http://127.0.0.1:9400", token, outbox: pool });
 *     const { jobId, mode } = await jobs.enqueue("send_email", { message: { to: [...], ... } });
 */
export class JobsClient<Jobs extends object = JobArgs> {
  readonly baseUrl: string;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;
  private readonly attemptTimeoutMs: number;
  private readonly retries: number;
  private readonly backoffMs: number;
  private readonly outbox: SqlExecutor | undefined;
  private readonly spoolTable: string;
  private readonly queue: string;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions) {
    if (!/^https?:\/\//.test(options.baseUrl)) {
      throw new TypeError(`baseUrl ${JSON.stringify(options.baseUrl)} must start with http:// or https://`);
    }
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.attemptTimeoutMs = options.attemptTimeoutMs ?? 2_000;
    this.retries = options.retries ?? 3;
    this.backoffMs = options.backoffMs ?? 100;
    this.outbox = options.outbox;
    this.spoolTable = options.spoolTable ?? DEFAULT_SPOOL_TABLE;
    this.queue = options.queue ?? DEFAULT_QUEUE;
    this.fetchImpl = options.fetch ?? globalThis.fetch;
  }

  /** Enqueue one job. Retries reuse the job id; when the API stays unreachable and an outbox is
   * configured, the job is written to the spool (`via: "outbox"`, `mode: "spooled"`). */
  async enqueue<N extends keyof Jobs & string, R = unknown>(
    name: N,
    args: Jobs[N],
    options: EnqueueOptions = {},
  ): Promise<EnqueueResult<R>> {
    const jobId = checkJobId(options.jobId ?? newJobId());
    const deadline = this.deadline(options);
    const body: Record<string, unknown> = { args, job_id: jobId };
    if (options.deferBy !== undefined) body["defer_by"] = options.deferBy;
    if (options.wait !== undefined && options.wait !== false) body["wait"] = options.wait;
    if (options.background) body["background"] = true;
    if (options.queue !== undefined) body["queue"] = options.queue;
    const headers: Record<string, string> = { "idempotency-key": jobId };
    if (options.traceparent !== undefined) headers["traceparent"] = options.traceparent;
    let answer: Answer;
    try {
      answer = await this.request("POST", `/v1/jobs/${encodeURIComponent(name)}`, body, this.httpPhase(deadline), headers);
    } catch (error) {
      if (!(error instanceof ApiUnavailableError) || this.outbox === undefined) throw error;
      const row = { jobId, name, args: args as object, deferBy: options.deferBy, durable: this.durable(name), traceparent: options.traceparent, queue: this.queueKey(name, options.queue) };
      const inserted = await this.writeOutbox(this.outbox, [row], deadline, error);
      const out: EnqueueResult<R> = { jobId, name, mode: "spooled", duplicate: !inserted.has(jobId), via: "outbox" };
      if (body["wait"] !== undefined) out.status = "pending";
      return out;
    }
    if (answer.status >= 300) throw apiError(answer);
    const data = answer.body as Record<string, unknown>;
    const out: EnqueueResult<R> = {
      jobId: String(data["job_id"]),
      name: String(data["name"]),
      mode: data["mode"] as Mode,
      duplicate: data["duplicate"] === true,
      via: "api",
    };
    if (typeof data["status"] === "string") out.status = data["status"] as EnqueueResult["status"] & string;
    if ("result" in data) out.result = data["result"] as R;
    if (data["error"] && typeof data["error"] === "object") out.error = data["error"] as JobErrorInfo;
    return out;
  }

  /** Enqueue many jobs of one kind in one call (every job validated before any is queued). Each
   * job without an id gets one before the first attempt, so retries and the outbox are safe. */
  async enqueueMany<N extends keyof Jobs & string>(
    name: N,
    jobs: Array<BatchJob<Jobs[N]>>,
    options: EnqueueManyOptions = {},
  ): Promise<EnqueueManyResult> {
    if (jobs.length === 0) return { name, jobs: [], counts: {}, via: "api" };
    const withIds = jobs.map((job) => ({ args: job.args, jobId: checkJobId(job.jobId ?? newJobId()) }));
    const deadline = this.deadline(options);
    const body: Record<string, unknown> = { jobs: withIds.map((j) => ({ args: j.args, job_id: j.jobId })) };
    if (options.deferBy !== undefined) body["defer_by"] = options.deferBy;
    if (options.queue !== undefined) body["queue"] = options.queue;
    const headers: Record<string, string> = {};
    if (options.traceparent !== undefined) headers["traceparent"] = options.traceparent;
    let answer: Answer;
    try {
      answer = await this.request("POST", `/v1/jobs/${encodeURIComponent(name)}/batch`, body, this.httpPhase(deadline), headers);
    } catch (error) {
      if (!(error instanceof ApiUnavailableError) || this.outbox === undefined) throw error;
      const durable = this.durable(name);
      const queue = this.queueKey(name, options.queue);
      const rows = withIds.map((j) => ({ jobId: j.jobId, name, args: j.args as object, deferBy: options.deferBy, durable, traceparent: options.traceparent, queue }));
      const inserted = await this.writeOutbox(this.outbox, rows, deadline, error);
      const out = rows.map((r) => ({ jobId: r.jobId, mode: "spooled" as const, duplicate: !inserted.has(r.jobId) }));
      return { name, jobs: out, counts: { spooled: out.length, duplicate: out.filter((j) => j.duplicate).length }, via: "outbox" };
    }
    if (answer.status >= 300) throw apiError(answer);
    const data = answer.body as { name: string; jobs: Array<{ job_id: string; mode: Mode; duplicate: boolean }>; counts: Record<string, number> };
    return {
      name: data.name,
      jobs: data.jobs.map((j) => ({ jobId: j.job_id, mode: j.mode, duplicate: j.duplicate })),
      counts: data.counts,
      via: "api",
    };
  }

  /**
   * Write the job into the runner's spool on `tx`, inside the caller's own transaction: it is
   * queued after the transaction commits (the relay is woken by the commit's NOTIFY), and a
   * rolled-back transaction leaves no job. `tx` is a node-postgres/Neon client that ran BEGIN,
   * or the `tx` of Drizzle's `db.transaction(async (tx) => ...)`; not a pool.
   */
  async enqueueInTransaction<N extends keyof Jobs & string>(
    tx: SqlExecutor,
    name: N,
    args: Jobs[N],
    options: EnqueueInTransactionOptions = {},
  ): Promise<EnqueueResult> {
    if (looksLikePool(tx)) {
      throw new TypeError(
        "enqueueInTransaction needs the client or transaction your transaction runs on (pool.connect() then BEGIN, or Drizzle's tx), not a pool or database",
      );
    }
    const jobId = checkJobId(options.jobId ?? newJobId());
    let payload = args as object;
    if (options.validate) payload = await this.validate(name, args);
    const row: SpoolRow = { jobId, name, args: payload, deferBy: options.deferBy, durable: this.durable(name), traceparent: options.traceparent, queue: this.queueKey(name, options.queue) };
    const inserted = await spoolJobs(tx, [row], { table: this.spoolTable });
    return { jobId, name, mode: "spooled", duplicate: !inserted.has(jobId), via: "outbox" };
  }

  /** The arguments as the job will receive them (defaults filled in), or `ValidationError`. */
  async validate<N extends keyof Jobs & string>(name: N, args: Jobs[N], options: CallOptions = {}): Promise<object> {
    const answer = await this.request("POST", `/v1/jobs/${encodeURIComponent(name)}/validate`, { args }, this.deadline(options));
    if (answer.status >= 300) throw apiError(answer);
    return (answer.body as { args: object }).args;
  }

  /** Where a job is: spooled, queued, deferred, in_progress, complete, failed, dead, not_found
   * (or unknown while Redis is unreachable and Postgres knows nothing of it). */
  async status(jobId: string, options: CallOptions = {}): Promise<JobStatus> {
    // 503 with a status is an answer ("unknown": Redis unreachable, nothing in Postgres), not an outage.
    const known = (a: Answer): boolean => typeof (a.body as Record<string, unknown> | null)?.["status"] === "string";
    const answer = await this.request("GET", `/v1/jobs/${encodeURIComponent(jobId)}`, undefined, this.deadline(options), {}, known);
    const body = answer.body as Record<string, unknown> | null;
    if ((answer.status < 300 || answer.status === 404 || answer.status === 503) && typeof body?.["status"] === "string") {
      return jobStatus(body);
    }
    throw apiError(answer);
  }

  /** Cancel a job: a queued, deferred or spooled one is removed (its status becomes
   * `cancelled`), a running one is asked to stop. Returns what happened. */
  async cancel(jobId: string, options: CallOptions = {}): Promise<CancelOutcome> {
    const answer = await this.request("DELETE", `/v1/jobs/${encodeURIComponent(jobId)}`, undefined, this.deadline(options));
    const outcome = (answer.body as Record<string, unknown> | null)?.["outcome"];
    if ((answer.status < 300 || answer.status === 404) && typeof outcome === "string") return outcome as CancelOutcome;
    throw apiError(answer);
  }

  /** Stop workers claiming from queue `name` (jobs keep arriving and wait). */
  async pauseQueue(name: string, options: CallOptions = {}): Promise<QueueState> {
    return this.changeQueue(name, "pause", options);
  }

  /** Let workers claim from a paused queue again. */
  async resumeQueue(name: string, options: CallOptions = {}): Promise<QueueState> {
    return this.changeQueue(name, "resume", options);
  }

  /** Poll until the job completes (its result) or fails (`JobFailedError`); `WaitTimeoutError`
   * after `timeoutMs` (default 30 s). A spooled job waits for Redis and a worker. */
  async waitForResult<R = unknown>(jobId: string, options: WaitOptions = {}): Promise<R> {
    const timeoutMs = options.timeoutMs ?? 30_000;
    const until = Date.now() + timeoutMs;
    let pause = options.pollMs ?? 50;
    let last: string | undefined;
    while (true) {
      const left = until - Date.now();
      if (left <= 0) throw new WaitTimeoutError(jobId, timeoutMs, last);
      try {
        const report = await this.status(jobId, { timeoutMs: left, ...(options.signal ? { signal: options.signal } : {}) });
        last = report.status;
        if (report.status === "complete") return report.result as R;
        if (report.status === "failed" || report.status === "dead" || report.status === "cancelled") {
          throw new JobFailedError(jobId, report.error ?? { type: "Error", message: "failed", kind: "permanent" });
        }
      } catch (error) {
        if (!(error instanceof ApiUnavailableError)) throw error; // keep polling through an outage
        last = "unknown";
      }
      await sleep(Math.min(pause, Math.max(0, until - Date.now())), options.signal);
      pause = Math.min(pause * 2, 1_000);
    }
  }

  /** Record analytics events: invalid ones are refused with a reason, the rest accepted. */
  async trackEvents(events: AnalyticsEvent[], options: CallOptions = {}): Promise<TrackResult> {
    const now = new Date().toISOString();
    const prepared = events.map((e) => ({ ...e, event_id: e.event_id ?? newEventId(), occurred_at: e.occurred_at ?? now }));
    const answer = await this.request("POST", "/v1/events", { events: prepared }, this.deadline(options));
    if (answer.status >= 300) throw apiError(answer);
    const data = answer.body as { accepted: number; refused: number; errors: Array<{ index: number; reason: string; event_id: string | null }>; stored_in: TrackResult["storedIn"] };
    return {
      accepted: data.accepted,
      refused: data.refused,
      errors: data.errors.map((e) => ({ index: e.index, reason: e.reason, eventId: e.event_id })),
      storedIn: data.stored_in,
    };
  }

  /** The registered jobs and their argument JSON Schemas (`python -m worker jobs --schema`). */
  async listJobs(options: CallOptions = {}): Promise<Record<string, unknown>> {
    const answer = await this.request("GET", "/v1/jobs", undefined, this.deadline(options));
    if (answer.status >= 300) throw apiError(answer);
    return answer.body as Record<string, unknown>;
  }

  // -- internals ---------------------------------------------------------------------------------

  private durable(name: string): boolean {
    return (JOBS as Record<string, { durable: boolean } | undefined>)[name]?.durable ?? false;
  }

  /** The Redis key of the queue an outbox row goes to: the caller's queue, else the job's own
   * (when it names one), else `default` (the key `QUEUE_NAME` itself). */
  private queueKey(name: string, queue: string | undefined): string {
    const chosen = queue ?? (JOBS as Record<string, { queue: string | null } | undefined>)[name]?.queue ?? "default";
    if (!/^[a-z0-9][a-z0-9_-]{0,39}$/.test(chosen)) {
      throw new TypeError(`queue ${JSON.stringify(chosen)} is not a queue name; use 1-40 lowercase letters, digits, _ and -`);
    }
    return chosen === "default" ? this.queue : `${this.queue}:${chosen}`;
  }

  private async changeQueue(name: string, action: "pause" | "resume", options: CallOptions): Promise<QueueState> {
    const answer = await this.request("POST", `/v1/queues/${encodeURIComponent(name)}/${action}`, undefined, this.deadline(options));
    if (answer.status >= 300) throw apiError(answer);
    const data = answer.body as { queue: string; paused: boolean; was_paused: boolean };
    return { queue: data.queue, paused: data.paused, wasPaused: data.was_paused };
  }

  private deadline(options: CallOptions): Deadline {
    return { at: Date.now() + (options.timeoutMs ?? this.timeoutMs), signal: options.signal };
  }

  /** The part of the call's time the HTTP attempts may use: with an outbox, a quarter (at most
   * 2 s) is kept for the outbox write. */
  private httpPhase(deadline: Deadline): Deadline {
    if (this.outbox === undefined) return deadline;
    const left = deadline.at - Date.now();
    return { at: deadline.at - Math.min(2_000, left / 4), signal: deadline.signal };
  }

  private async writeOutbox(db: SqlExecutor, rows: SpoolRow[], deadline: Deadline, apiDown: ApiUnavailableError): Promise<Set<string>> {
    const left = deadline.at - Date.now();
    const write = spoolJobs(db, rows, { table: this.spoolTable });
    try {
      return await within(write, left, () => new JobsError(`the outbox write did not finish within ${Math.round(left)} ms`));
    } catch (error) {
      write.catch(() => undefined); // a late failure is already reported
      throw new ApiUnavailableError(
        `the API is unreachable (${apiDown.message}) and the job could not be written to the outbox: ${(error as Error).message}; ` +
          "a retry with the same job id is safe",
        apiDown.attempts,
        error,
      );
    }
  }

  /** One call with retries: connection errors, attempt timeouts, 429 and 5xx are retried with
   * backoff until `retries` or the deadline; any other answer is returned. Throws
   * `ApiUnavailableError` when no usable answer came. */
  private async request(
    method: string,
    path: string,
    body: unknown,
    deadline: Deadline,
    extraHeaders: Record<string, string> = {},
    final: (answer: Answer) => boolean = () => false,
  ): Promise<Answer> {
    const headers: Record<string, string> = { accept: "application/json", "user-agent": `maxbooster-jobs-client/${CLIENT_VERSION}`, ...extraHeaders };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (this.token !== undefined) headers["authorization"] = `Bearer ${this.token}`;
    const payload = body === undefined ? undefined : JSON.stringify(body);
    let attempts = 0;
    let lastProblem = "no attempt made";
    let lastError: unknown;
    while (true) {
      const left = deadline.at - Date.now();
      if (left <= 0) break;
      attempts += 1;
      const attempt = new AbortController();
      const timer = setTimeout(() => attempt.abort(new JobsError("attempt timed out")), Math.min(this.attemptTimeoutMs, left));
      const stop = (): void => attempt.abort(deadline.signal?.reason);
      deadline.signal?.addEventListener("abort", stop, { once: true });
      try {
        const response = await this.fetchImpl(this.baseUrl + path, { method, headers, body: payload, signal: attempt.signal });
        const text = await response.text();
        let parsed: unknown = null;
        try {
          parsed = text ? JSON.parse(text) : null;
        } catch {
          parsed = { error: { code: "", message: text.slice(0, 200) } };
        }
        const answer = { status: response.status, body: parsed };
        const retryable = response.status === 429 || response.status >= 500;
        if (!retryable || FINAL_CODES.has(errorCode(parsed).code) || final(answer)) return answer;
        lastError = apiError(answer);
        lastProblem = `HTTP ${response.status}${errorCode(parsed).message ? `: ${errorCode(parsed).message}` : ""}`;
      } catch (error) {
        if (deadline.signal?.aborted) throw deadline.signal.reason;
        lastError = error;
        const cause = (error as { cause?: { code?: string; message?: string } }).cause;
        lastProblem = attempt.signal.aborted ? `no answer within ${Math.min(this.attemptTimeoutMs, left)} ms` : (cause?.code ?? cause?.message ?? (error as Error).message);
      } finally {
        clearTimeout(timer);
        deadline.signal?.removeEventListener("abort", stop);
      }
      if (attempts > this.retries) break;
      const delay = Math.min(RETRY_CAP_MS, this.backoffMs * 2 ** (attempts - 1)) * (0.5 + Math.random());
      const pause = Math.min(delay, deadline.at - Date.now());
      if (pause <= 0) break;
      await sleep(pause, deadline.signal);
    }
    throw new ApiUnavailableError(`${this.baseUrl} unreachable after ${attempts} attempts (last: ${lastProblem})`, attempts, lastError);
  }
}
