//! The persistent queue: API tokens and jobs, with leases so that a job whose worker died is
//! taken over by another and resumed from its saved state.
//!
//! A job moves `queued → running → done | failed | cancelled`. A running job is held by one
//! worker through a lease the worker renews; when the lease runs out (the worker was killed,
//! its machine lost power) the job counts as interrupted and the next worker to look claims it.
//! Claiming is one atomic statement, so two workers never take the same job.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::db::{self, Database, DbError, Row, Value};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    admin BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    hash TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    output_name TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    error TEXT,
    progress TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until_ms BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    frames BIGINT,
    seconds DOUBLE PRECISION,
    steps_done BIGINT NOT NULL DEFAULT 0,
    peak_mib BIGINT
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_ms, id);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_ms, id);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_ms, id);
CREATE INDEX IF NOT EXISTS jobs_by_owner_state ON jobs (owner, state, created_ms, id);
";

const JOB_COLUMNS: &str = "id, owner, model, kind, state, request, output_name, created_ms, started_ms, finished_ms, \
     error, progress, cancel_requested, worker, lease_until_ms, attempts, frames, seconds, steps_done, peak_mib";

/// A job's lifecycle state as stored.
pub mod state {
    /// Waiting for a worker.
    pub const QUEUED: &str = "queued";
    /// Held by a worker (or interrupted, when its lease ran out).
    pub const RUNNING: &str = "running";
    /// Finished; the video is complete.
    pub const DONE: &str = "done";
    /// Stopped by an error.
    pub const FAILED: &str = "failed";
    /// Stopped by its owner.
    pub const CANCELLED: &str = "cancelled";
    /// Being deleted: its worker stops, then the job and its files go.
    pub const DELETING: &str = "deleting";
}

/// An API token (its secret is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Owner id of the token's jobs.
    pub id: String,
    /// The name given at creation.
    pub name: String,
    /// Sees and manages every job.
    pub admin: bool,
}

/// One job as stored.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// 32 hex digits.
    pub id: String,
    /// The id of the token that created it.
    pub owner: String,
    /// The model name it runs.
    pub model: String,
    /// text, image, end_image, references, extend or story.
    pub kind: String,
    /// See [`state`].
    pub state: String,
    /// The API request (JSON) with the seed and model filled in.
    pub request: String,
    /// The output's file name inside the job folder.
    pub output_name: String,
    /// When it was created (ms since the epoch).
    pub created_ms: i64,
    /// When a worker first started it.
    pub started_ms: Option<i64>,
    /// When it ended.
    pub finished_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The latest progress (JSON).
    pub progress: Option<String>,
    /// Its owner asked to stop it.
    pub cancel_requested: bool,
    /// The worker holding it.
    pub worker: Option<String>,
    /// Until when that worker's lease holds.
    pub lease_until_ms: Option<i64>,
    /// How many times a worker has claimed it.
    pub attempts: i64,
    /// Frames written.
    pub frames: Option<i64>,
    /// Generation seconds (summed over attempts).
    pub seconds: Option<f64>,
    /// Denoising steps done.
    pub steps_done: i64,
    /// Peak memory of the run (GPU when on a GPU, else the worker's resident set).
    pub peak_mib: Option<i64>,
}

impl JobRow {
    fn from_row(r: &Row) -> Self {
        Self {
            id: r.text(0).unwrap_or_default(),
            owner: r.text(1).unwrap_or_default(),
            model: r.text(2).unwrap_or_default(),
            kind: r.text(3).unwrap_or_default(),
            state: r.text(4).unwrap_or_default(),
            request: r.text(5).unwrap_or_default(),
            output_name: r.text(6).unwrap_or_default(),
            created_ms: r.int(7).unwrap_or_default(),
            started_ms: r.int(8),
            finished_ms: r.int(9),
            error: r.text(10),
            progress: r.text(11),
            cancel_requested: r.int(12).unwrap_or(0) != 0,
            worker: r.text(13),
            lease_until_ms: r.int(14),
            attempts: r.int(15).unwrap_or(0),
            frames: r.int(16),
            seconds: r.real(17),
            steps_done: r.int(18).unwrap_or(0),
            peak_mib: r.int(19),
        }
    }

    /// The state a client sees: a running job whose lease ran out is `interrupted` (it will be
    /// resumed by the next free worker).
    pub fn visible_state(&self, now_ms: i64) -> &str {
        match (self.state.as_str(), self.lease_until_ms) {
            (state::RUNNING, Some(until)) if until < now_ms => "interrupted",
            (state::DELETING, _) => state::CANCELLED,
            (s, _) => s,
        }
    }

    /// Whether the job can no longer change.
    pub fn is_final(&self) -> bool {
        matches!(self.state.as_str(), state::DONE | state::FAILED | state::CANCELLED)
    }
}

/// What a new job needs.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// 32 hex digits, chosen by the caller (its folder already exists).
    pub id: String,
    /// The owner's token id.
    pub owner: String,
    /// The model name.
    pub model: String,
    /// The kind shown to clients.
    pub kind: String,
    /// The request as JSON.
    pub request: String,
    /// The output's file name.
    pub output_name: String,
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue holds its maximum of waiting and running jobs.
    #[error("the queue is full ({0} jobs waiting or running); try again later")]
    Full(usize),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What a worker learns when it renews its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Still held; `cancel` says whether the owner asked to stop.
    Held {
        /// Stop requested (cancel or delete).
        cancel: bool,
    },
    /// Lost: another worker took the job over, or it was deleted. Stop at once.
    Lost,
}

/// Jobs per state, for metrics.
pub type StateCounts = Vec<(String, i64)>;

/// The queue and the tokens, in one database.
pub struct Store {
    db: Box<dyn Database>,
}

impl Store {
    /// Opens the database at `url` and creates the tables it lacks.
    pub fn open(url: &str) -> Result<Self, DbError> {
        let db = db::open(url)?;
        db.batch(SCHEMA)?;
        Ok(Self { db })
    }

    /// `sqlite` or `postgresql`.
    pub fn kind(&self) -> &'static str {
        self.db.kind()
    }

    // ----- tokens -----

    /// Creates a token and returns it with its secret, which is shown once and never stored.
    pub fn create_token(&self, name: &str, admin: bool) -> Result<(Token, String), DbError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(DbError("a token needs a name of 1 to 100 characters".into()));
        }
        let id = random_hex(16);
        let secret = format!("sk_{}", random_hex(32));
        let inserted = self.db.execute(
            "INSERT INTO tokens (id, name, hash, admin, created_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[id.clone().into(), name.into(), hash_secret(&secret).into(), i64::from(admin).into(), now_ms().into()],
        )?;
        if inserted == 0 {
            return Err(DbError(format!("a token named `{name}` already exists")));
        }
        Ok((Token { id, name: name.to_string(), admin }, secret))
    }

    /// The token whose secret this is.
    pub fn token_by_secret(&self, secret: &str) -> Result<Option<Token>, DbError> {
        let rows =
            self.db.query("SELECT id, name, admin FROM tokens WHERE hash = $1", &[hash_secret(secret).into()])?;
        Ok(rows.first().map(token_from_row))
    }

    /// Every token.
    pub fn tokens(&self) -> Result<Vec<Token>, DbError> {
        Ok(self
            .db
            .query("SELECT id, name, admin FROM tokens ORDER BY created_ms", &[])?
            .iter()
            .map(token_from_row)
            .collect())
    }

    /// Deletes the token named `name`; its requests (and browser sessions) are refused from now on.
    pub fn delete_token(&self, name: &str) -> Result<bool, DbError> {
        self.db
            .execute("DELETE FROM sessions WHERE token IN (SELECT id FROM tokens WHERE name = $1)", &[name.into()])?;
        Ok(self.db.execute("DELETE FROM tokens WHERE name = $1", &[name.into()])? > 0)
    }

    /// Whether the token with this id still exists.
    pub fn token_exists(&self, id: &str) -> Result<bool, DbError> {
        Ok(!self.db.query("SELECT id FROM tokens WHERE id = $1", &[id.into()])?.is_empty())
    }

    // ----- browser sessions -----

    /// Starts a browser session for `token` lasting `ttl_ms`; returns its secret (only its hash is
    /// stored). Expired sessions are swept at the same time.
    pub fn create_session(&self, token: &Token, ttl_ms: i64) -> Result<String, DbError> {
        let now = now_ms();
        self.db.execute("DELETE FROM sessions WHERE expires_ms <= $1", &[now.into()])?;
        let secret = format!("ss_{}", random_hex(32));
        self.db.execute(
            "INSERT INTO sessions (hash, token, expires_ms) VALUES ($1, $2, $3)",
            &[hash_secret(&secret).into(), token.id.clone().into(), (now + ttl_ms).into()],
        )?;
        Ok(secret)
    }

    /// The token of a live session.
    pub fn token_by_session(&self, secret: &str) -> Result<Option<Token>, DbError> {
        let rows = self.db.query(
            "SELECT t.id, t.name, t.admin FROM sessions s JOIN tokens t ON t.id = s.token \
             WHERE s.hash = $1 AND s.expires_ms > $2",
            &[hash_secret(secret).into(), now_ms().into()],
        )?;
        Ok(rows.first().map(token_from_row))
    }

    /// Ends a session (signing out).
    pub fn delete_session(&self, secret: &str) -> Result<(), DbError> {
        self.db.execute("DELETE FROM sessions WHERE hash = $1", &[hash_secret(secret).into()])?;
        Ok(())
    }

    /// The stored hashes (for tests that check no secret is stored).
    pub fn token_hashes(&self) -> Result<Vec<String>, DbError> {
        Ok(self.db.query("SELECT hash FROM tokens", &[])?.iter().filter_map(|r| r.text(0)).collect())
    }

    // ----- jobs -----

    /// Queues a job unless `max_waiting` jobs already wait or run.
    pub fn insert_job(&self, job: &NewJob, max_waiting: usize) -> Result<JobRow, QueueError> {
        let inserted = self.db.execute(
            "INSERT INTO jobs (id, owner, model, kind, state, request, output_name, created_ms) \
             SELECT $1, $2, $3, $4, $5, $6, $7, CAST($8 AS BIGINT) \
             WHERE (SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')) < $9",
            &[
                job.id.clone().into(),
                job.owner.clone().into(),
                job.model.clone().into(),
                job.kind.clone().into(),
                state::QUEUED.into(),
                job.request.clone().into(),
                job.output_name.clone().into(),
                now_ms().into(),
                (max_waiting as i64).into(),
            ],
        )?;
        if inserted == 0 {
            return Err(QueueError::Full(max_waiting));
        }
        Ok(self.job(&job.id)?.ok_or_else(|| DbError("the new job vanished".into()))?)
    }

    /// One job.
    pub fn job(&self, id: &str) -> Result<Option<JobRow>, DbError> {
        let rows = self.db.query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"), &[id.into()])?;
        Ok(rows.first().map(JobRow::from_row))
    }

    /// Jobs, newest first: of one owner (or all), optionally in one stored state.
    pub fn jobs(
        &self,
        owner: Option<&str>,
        state: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<JobRow>, DbError> {
        // Only the filters given appear in the statement, so the (owner|state, created_ms)
        // indexes serve it without a scan.
        let mut filters = Vec::new();
        let mut params: Vec<Value> = Vec::new();
        for (column, value) in [("owner", owner), ("state", state)] {
            if let Some(value) = value {
                params.push(value.into());
                filters.push(format!("{column} = ${}", params.len()));
            }
        }
        let condition = if filters.is_empty() { String::new() } else { format!("WHERE {}", filters.join(" AND ")) };
        params.extend([(limit as i64).into(), (offset as i64).into()]);
        let n = params.len();
        let rows = self.db.query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs {condition} ORDER BY created_ms DESC, id DESC LIMIT ${} OFFSET ${n}",
                n - 1
            ),
            &params,
        )?;
        Ok(rows.iter().map(JobRow::from_row).collect())
    }

    /// Cancels a job: a queued one at once, a running one at its worker's next step.
    pub fn cancel(&self, id: &str) -> Result<(), DbError> {
        self.db.execute(
            "UPDATE jobs SET state = $1, finished_ms = $2 WHERE id = $3 AND state = $4",
            &[state::CANCELLED.into(), now_ms().into(), id.into(), state::QUEUED.into()],
        )?;
        self.db.execute(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = $1 AND state = $2",
            &[id.into(), state::RUNNING.into()],
        )?;
        Ok(())
    }

    /// Marks a job for deletion. Returns `true` when no worker holds it (the caller removes it
    /// now); otherwise its worker stops and removes it.
    pub fn start_delete(&self, id: &str, now: i64) -> Result<bool, DbError> {
        let held = self.db.execute(
            "UPDATE jobs SET state = $1, cancel_requested = 1 WHERE id = $2 AND state = $3 AND lease_until_ms >= $4",
            &[state::DELETING.into(), id.into(), state::RUNNING.into(), now.into()],
        )?;
        Ok(held == 0)
    }

    /// Removes a job's row.
    pub fn remove_job(&self, id: &str) -> Result<(), DbError> {
        self.db.execute("DELETE FROM jobs WHERE id = $1", &[id.into()])?;
        Ok(())
    }

    /// Jobs being deleted whose worker is gone.
    pub fn abandoned_deletions(&self, now: i64) -> Result<Vec<String>, DbError> {
        let rows = self.db.query(
            "SELECT id FROM jobs WHERE state = $1 AND (lease_until_ms IS NULL OR lease_until_ms < $2)",
            &[state::DELETING.into(), now.into()],
        )?;
        Ok(rows.iter().filter_map(|r| r.text(0)).collect())
    }

    /// Claims the oldest job this worker can run: a queued one, or a running one whose lease
    /// ran out. Atomic: of two workers asking at once, one gets it.
    pub fn claim(&self, worker: &str, models: &[String], lease_ms: i64) -> Result<Option<JobRow>, DbError> {
        if models.is_empty() {
            return Ok(None);
        }
        let now = now_ms();
        let model_params: Vec<String> = (0..models.len()).map(|i| format!("${}", i + 5)).collect();
        let sql = format!(
            "UPDATE jobs SET state = $1, worker = $2, lease_until_ms = $3, attempts = attempts + 1, \
             started_ms = COALESCE(started_ms, $4) \
             WHERE id = (SELECT id FROM jobs WHERE (state = $1 AND lease_until_ms < $4 OR state = 'queued') \
             AND model IN ({}) ORDER BY created_ms, id LIMIT 1 {{skip_locked}}) RETURNING {JOB_COLUMNS}",
            model_params.join(", ")
        );
        let mut params: Vec<Value> = vec![state::RUNNING.into(), worker.into(), (now + lease_ms).into(), now.into()];
        params.extend(models.iter().map(|m| Value::from(m.as_str())));
        Ok(self.db.query(&sql, &params)?.first().map(JobRow::from_row))
    }

    /// Renews `worker`'s lease on job `id` until `until`.
    pub fn renew(&self, id: &str, worker: &str, until: i64) -> Result<Lease, DbError> {
        let rows = self.db.query(
            "UPDATE jobs SET lease_until_ms = $1 WHERE id = $2 AND worker = $3 AND state IN ('running', 'deleting') \
             RETURNING cancel_requested",
            &[until.into(), id.into(), worker.into()],
        )?;
        Ok(match rows.first() {
            Some(r) => Lease::Held { cancel: r.int(0).unwrap_or(0) != 0 },
            None => Lease::Lost,
        })
    }

    /// Records progress of a held job.
    pub fn set_progress(&self, id: &str, worker: &str, progress: &Json, steps_done: i64) -> Result<(), DbError> {
        self.db.execute(
            "UPDATE jobs SET progress = $1, steps_done = $2 WHERE id = $3 AND worker = $4 AND state = 'running'",
            &[progress.to_string().into(), steps_done.into(), id.into(), worker.into()],
        )?;
        Ok(())
    }

    /// Ends a held job in `final_state`; returns `false` when the worker no longer held it.
    pub fn finish(&self, id: &str, worker: &str, end: &JobEnd) -> Result<bool, DbError> {
        let n = self.db.execute(
            "UPDATE jobs SET state = $1, error = $2, frames = $3, seconds = $4, peak_mib = $5, finished_ms = $6, \
             lease_until_ms = NULL WHERE id = $7 AND worker = $8 AND state = 'running'",
            &[
                end.state.into(),
                end.error.clone().into(),
                end.frames.into(),
                end.seconds.into(),
                end.peak_mib.into(),
                now_ms().into(),
                id.into(),
                worker.into(),
            ],
        )?;
        Ok(n > 0)
    }

    /// Makes the jobs `worker` held claimable at once (its previous process is known dead).
    pub fn release_worker(&self, worker: &str) -> Result<u64, DbError> {
        self.db.execute(
            "UPDATE jobs SET lease_until_ms = 0 WHERE worker = $1 AND state IN ('running', 'deleting')",
            &[worker.into()],
        )
    }

    /// Jobs per stored state.
    pub fn counts(&self) -> Result<StateCounts, DbError> {
        let rows = self.db.query("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state", &[])?;
        Ok(rows.iter().map(|r| (r.text(0).unwrap_or_default(), r.int(1).unwrap_or(0))).collect())
    }

    /// Seconds per denoising step over finished jobs, and the highest peak memory seen.
    pub fn speed(&self) -> Result<(Option<f64>, Option<i64>), DbError> {
        let rows = self.db.query(
            "SELECT SUM(seconds), SUM(steps_done), MAX(peak_mib) FROM jobs WHERE state = 'done' AND steps_done > 0",
            &[],
        )?;
        let Some(r) = rows.first() else { return Ok((None, None)) };
        let per_step = match (r.real(0), r.real(1)) {
            (Some(s), Some(n)) if n > 0.0 => Some(s / n),
            _ => None,
        };
        Ok((per_step, r.int(2)))
    }
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct JobEnd {
    /// done, failed or cancelled.
    pub state: &'static str,
    /// Why it failed.
    pub error: Option<String>,
    /// Frames written.
    pub frames: Option<i64>,
    /// Generation seconds.
    pub seconds: Option<f64>,
    /// Peak memory.
    pub peak_mib: Option<i64>,
}

fn token_from_row(r: &Row) -> Token {
    Token { id: r.text(0).unwrap_or_default(), name: r.text(1).unwrap_or_default(), admin: r.int(2).unwrap_or(0) != 0 }
}

/// The stored form of a token: its SHA-256 (tokens are 256 random bits, so a fast hash is
/// enough to make a stolen database useless for calling the API).
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `bytes` random bytes from the operating system, as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source is available");
    hex::encode(buf)
}
