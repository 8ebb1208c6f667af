export {
  type AnalyticsEvent,
  type BatchJob,
  type CallOptions,
  CLIENT_VERSION,
  type ClientOptions,
  type EnqueueInTransactionOptions,
  type EnqueueManyOptions,
  type EnqueueManyResult,
  type EnqueueOptions,
  type EnqueueResult,
  type JobErrorInfo,
  JobsClient,
  type JobState,
  type JobStatus,
  type Mode,
  type TrackResult,
  type WaitOptions,
} from "./client.ts";
export {
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
export * from "./jobs.generated.ts";
export {
  DEFAULT_QUEUE,
  DEFAULT_SPOOL_TABLE,
  type DrizzleLike,
  type QueryClient,
  SPOOL_CHANNEL,
  type SqlExecutor,
} from "./outbox.ts";
