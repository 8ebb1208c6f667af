/** Errors the client throws. Every one extends `JobsError`. */

/** A problem with one field of a request, as the API names it. */
export interface FieldProblem {
  /** e.g. `args.message.to.0.email`, `job_id`, `jobs[3].args.key` */
  field: string;
  problem: string;
}

export class JobsError extends Error {
  override name = "JobsError";
}

/** The API answered with an error (4xx, or 5xx once retries are spent). */
export class ApiError extends JobsError {
  override name = "ApiError";
  readonly status: number;
  /** Stable, machine-readable: `invalid_arguments`, `unauthorized`, `forbidden`, `unknown_job`, ... */
  readonly code: string;
  readonly fields: FieldProblem[];
  /** The error body as the API sent it. */
  readonly body: unknown;

  constructor(status: number, code: string, message: string, fields: FieldProblem[] = [], body?: unknown) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields;
    this.body = body;
  }
}

/** 422: the arguments (or another field) are invalid; `fields` names each problem. Nothing was enqueued. */
export class ValidationError extends ApiError {
  override name = "ValidationError";
}

/** 401 (no or unknown token) or 403 (the token may not use this job). */
export class AuthError extends ApiError {
  override name = "AuthError";
}

/** 503 `enqueue_refused`: the runner could neither queue, spool nor run the job (its fallback
 * policy while Redis is down). The outbox is not used: the runner decided. */
export class EnqueueRefusedError extends ApiError {
  override name = "EnqueueRefusedError";
  /** For a batch: ids of the jobs that did reach the queue before the refusal. */
  readonly queued: string[];

  constructor(status: number, code: string, message: string, queued: string[], body?: unknown) {
    super(status, code, message, [], body);
    this.queued = queued;
  }
}

/** No usable answer from the API within the limits (connection errors, timeouts, 5xx), and no
 * outbox to fall back to (or the outbox failed too; see `cause`). */
export class ApiUnavailableError extends JobsError {
  override name = "ApiUnavailableError";
  readonly attempts: number;

  constructor(message: string, attempts: number, cause?: unknown) {
    super(message, { cause });
    this.attempts = attempts;
  }
}

/** The job ran and failed (`waitForResult`, or `enqueue` with `wait`). */
export class JobFailedError extends JobsError {
  override name = "JobFailedError";
  readonly jobId: string;
  /** The exception type in the job, e.g. `PermanentError`, `JobTimeout`. */
  readonly errorType: string;
  readonly errorMessage: string;
  readonly kind: "transient" | "permanent";

  constructor(jobId: string, error: { type?: string; message?: string; kind?: string }) {
    const type = error.type ?? "Error";
    const message = error.message ?? "";
    super(`job ${jobId} failed: ${type}: ${message}`);
    this.jobId = jobId;
    this.errorType = type;
    this.errorMessage = message;
    this.kind = error.kind === "transient" ? "transient" : "permanent";
  }
}

/** `waitForResult` ran out of time; the job may still finish. */
export class WaitTimeoutError extends JobsError {
  override name = "WaitTimeoutError";
  readonly jobId: string;
  /** The last status seen, e.g. `queued`, `in_progress`, `spooled`. */
  readonly lastStatus: string | undefined;

  constructor(jobId: string, timeoutMs: number, lastStatus: string | undefined) {
    super(`job ${jobId} has no result after ${timeoutMs} ms (last status: ${lastStatus ?? "unknown"})`);
    this.jobId = jobId;
    this.lastStatus = lastStatus;
  }
}
