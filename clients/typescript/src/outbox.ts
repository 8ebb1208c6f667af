/**
 * The Postgres outbox: a job written straight into the runner's spool table, the same row and
 * NOTIFY that the Python producer writes (`Ledger.spool`). The runner's relay (in every worker)
 * moves it to Redis under the same job id, in order, when the row's transaction commits, so it
 * is queued once: the relay locks rows with SKIP LOCKED, and Redis deduplicates by job id.
 *
 * Works with anything that runs SQL: a node-postgres `Pool`/`Client`/`PoolClient`, a Neon
 * serverless `Pool` (`query(text, values)`), or a Drizzle database or transaction
 * (`execute(sql)`), told apart by duck typing; neither library is a dependency.
 */

/** node-postgres, Neon serverless and compatible clients. */
export interface QueryClient {
  query(text: string, values?: unknown[]): Promise<{ rows?: unknown[] } | unknown>;
}

/** A Drizzle database or transaction: `db`, or the `tx` of `db.transaction(async (tx) => ...)`. */
export interface DrizzleLike {
  execute(query: any): PromiseLike<unknown>;
}

export type SqlExecutor = QueryClient | DrizzleLike;

/** The channel the relay LISTENs on; a NOTIFY wakes it as soon as the row commits. */
export const SPOOL_CHANNEL = "mb_job_spool";
/** The runner's spool table, in the runner's own schema (`DATABASE_SCHEMA`, default `jobrunner`). */
export const DEFAULT_SPOOL_TABLE = "jobrunner.job_spool";
export const DEFAULT_QUEUE = "arq:queue";

/** One job as the spool keeps it. */
export interface SpoolRow {
  jobId: string;
  name: string;
  args: object;
  /** Seconds from now (the database's clock) before the job may start. */
  deferBy?: number | undefined;
  durable: boolean;
  traceparent?: string | undefined;
  /** The Redis key of the queue to deliver it to (`QUEUE_NAME`, or `QUEUE_NAME:<queue>`). */
  queue: string;
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/** `schema.table` or `table`, checked and quoted, for use in SQL text. */
export function quoteTable(table: string): string {
  const parts = table.split(".");
  if (parts.length > 2 || !parts.every((p) => IDENTIFIER.test(p))) {
    throw new TypeError(
      `spool table ${JSON.stringify(table)} is not a table name; use e.g. "job_spool" or "jobrunner.job_spool"`,
    );
  }
  return parts.map((p) => `"${p}"`).join(".");
}

function isQueryClient(db: unknown): db is QueryClient {
  return typeof (db as QueryClient | null)?.query === "function";
}

function isDrizzle(db: unknown): db is DrizzleLike {
  return typeof (db as DrizzleLike | null)?.execute === "function";
}

/** A stand-in for Drizzle's `sql` object: Drizzle asks it for its text and parameters and sends
 * them as one parameterized statement (no values are ever inlined into the SQL text). */
function drizzleStatement(text: string, values: unknown[]): unknown {
  const built = { sql: text, params: values };
  const statement = { toQuery: () => built, getSQL: () => statement, queryChunks: [] };
  return statement;
}

async function run(db: SqlExecutor, text: string, values: unknown[]): Promise<unknown[]> {
  let result: unknown;
  if (isQueryClient(db)) {
    result = await db.query(text, values);
  } else if (isDrizzle(db)) {
    result = await db.execute(drizzleStatement(text, values));
  } else {
    throw new TypeError(
      "outbox: expected a node-postgres/Neon client or pool (query(text, values)) or a Drizzle database or transaction (execute(sql))",
    );
  }
  if (Array.isArray(result)) return result;
  const rows = (result as { rows?: unknown } | null)?.rows;
  return Array.isArray(rows) ? rows : [];
}

/** True when `db` is clearly a pool or a whole database rather than one connection or
 * transaction (it could not hold the caller's transaction). */
export function looksLikePool(db: SqlExecutor): boolean {
  const candidate = db as unknown as Record<string, unknown>;
  if (isQueryClient(db)) {
    return typeof candidate["connect"] === "function" && "totalCount" in candidate;
  }
  return typeof candidate["transaction"] === "function" && typeof candidate["rollback"] !== "function";
}

const COLUMNS = 7;
const MAX_ROWS_PER_STATEMENT = 1000;

/**
 * Insert jobs into the spool (one statement per 1,000 jobs) and NOTIFY the relay. A job id
 * already in the spool is left alone (`ON CONFLICT DO NOTHING`), so a retried write is harmless.
 * Returns the ids that were new.
 */
export async function spoolJobs(
  db: SqlExecutor,
  rows: SpoolRow[],
  options: { table: string },
): Promise<Set<string>> {
  const table = quoteTable(options.table);
  const inserted = new Set<string>();
  for (let start = 0; start < rows.length; start += MAX_ROWS_PER_STATEMENT) {
    const chunk = rows.slice(start, start + MAX_ROWS_PER_STATEMENT);
    const values: unknown[] = [];
    const tuples = chunk.map((row, i) => {
      const n = i * COLUMNS;
      values.push(
        row.jobId,
        row.name,
        JSON.stringify(row.args),
        row.queue,
        row.deferBy ?? 0,
        row.durable,
        row.traceparent ?? null,
      );
      return (
        `($${n + 1}::text, $${n + 2}::text, $${n + 3}::jsonb, $${n + 4}::text, ` +
        `now() + make_interval(secs => $${n + 5}::double precision), $${n + 6}::boolean, $${n + 7}::text)`
      );
    });
    values.push(SPOOL_CHANNEL);
    const channel = `$${values.length}`;
    // The same statement as the runner's Ledger.spool: insert unless the id is spooled already,
    // and NOTIFY the relay for each new row (delivered at commit).
    const text =
      `WITH ins AS (INSERT INTO ${table} (job_id, job_name, payload, queue, run_at, durable, traceparent) ` +
      `VALUES ${tuples.join(", ")} ON CONFLICT (job_id) DO NOTHING RETURNING job_id) ` +
      `SELECT ins.job_id, pg_notify(${channel}, '') FROM ins`;
    for (const row of await run(db, text, values)) {
      const id = (row as { job_id?: unknown } | null)?.job_id ?? (Array.isArray(row) ? row[0] : undefined);
      if (typeof id === "string") inserted.add(id);
    }
  }
  return inserted;
}
