//! The two databases the queue can live in, behind one small interface: SQLite, embedded
//! (one machine, any number of processes, WAL), and PostgreSQL (several machines).
//!
//! Statements are written once, in the SQL both accept: numbered parameters `$1…`, `BIGINT`,
//! `TEXT`, `DOUBLE PRECISION`, `RETURNING`. The one difference, row locking when claiming a
//! job, is the `{skip_locked}` marker, which becomes `FOR UPDATE SKIP LOCKED` on PostgreSQL and
//! nothing on SQLite (whose single writer makes the claiming statement atomic already).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// A database failure, as one sentence.
#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct DbError(pub String);

/// One parameter or column value (typed even when null: PostgreSQL checks types).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A `BIGINT`.
    Int(Option<i64>),
    /// A `TEXT`.
    Text(Option<String>),
    /// A `DOUBLE PRECISION`.
    Real(Option<f64>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(Some(v))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(Some(v.to_string()))
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(Some(v))
    }
}
impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        Value::Text(v)
    }
}
impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        Value::Int(v)
    }
}
impl From<Option<f64>> for Value {
    fn from(v: Option<f64>) -> Self {
        Value::Real(v)
    }
}

/// A result row.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Column `i` as an integer (`None` when null or not an integer).
    pub fn int(&self, i: usize) -> Option<i64> {
        match self.0.get(i) {
            Some(Value::Int(v)) => *v,
            Some(Value::Real(v)) => v.map(|v| v as i64),
            _ => None,
        }
    }

    /// Column `i` as text.
    pub fn text(&self, i: usize) -> Option<String> {
        match self.0.get(i) {
            Some(Value::Text(v)) => v.clone(),
            _ => None,
        }
    }

    /// Column `i` as a float.
    pub fn real(&self, i: usize) -> Option<f64> {
        match self.0.get(i) {
            Some(Value::Real(v)) => *v,
            Some(Value::Int(v)) => v.map(|v| v as f64),
            _ => None,
        }
    }
}

/// A connection to the queue's database.
pub trait Database: Send + Sync {
    /// Runs a statement; returns the rows it changed.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, DbError>;
    /// Runs a query (or a statement with `RETURNING`); returns its rows.
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError>;
    /// Runs several statements separated by `;` (no parameters), e.g. the schema.
    fn batch(&self, sql: &str) -> Result<(), DbError>;
    /// `postgresql` or `sqlite`, for messages.
    fn kind(&self) -> &'static str;
}

/// Opens `url`: `postgres://…`/`postgresql://…`, or `sqlite:PATH` / a plain path for SQLite.
pub fn open(url: &str) -> Result<Box<dyn Database>, DbError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Box::new(Postgres::connect(url)?))
    } else {
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        Ok(Box::new(Sqlite::open(Path::new(path))?))
    }
}

/// SQLite in WAL mode: readers never wait for the writer, and writers from other processes
/// wait (up to 30 s) instead of failing.
pub struct Sqlite {
    connection: Mutex<rusqlite::Connection>,
}

impl Sqlite {
    /// Opens (creating) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let fail = |e: rusqlite::Error| DbError(format!("cannot open {}: {e}", path.display()));
        let connection = rusqlite::Connection::open(path).map_err(fail)?;
        connection.busy_timeout(Duration::from_secs(30)).map_err(fail)?;
        connection.pragma_update(None, "journal_mode", "WAL").map_err(fail)?;
        connection.pragma_update(None, "synchronous", "FULL").map_err(fail)?;
        Ok(Self { connection: Mutex::new(connection) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        // A panic elsewhere cannot leave the connection half-used: statements are atomic.
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `$1` → `?1` (SQLite's numbered parameters) and the PostgreSQL-only marker removed.
fn sqlite_sql(sql: &str) -> String {
    sql.replace("{skip_locked}", "").replace('$', "?")
}

fn to_sqlite(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Int(Some(i)) => V::Integer(*i),
        Value::Text(Some(s)) => V::Text(s.clone()),
        Value::Real(Some(r)) => V::Real(*r),
        _ => V::Null,
    }
}

fn sqlite_error(e: rusqlite::Error) -> DbError {
    DbError(e.to_string())
}

impl Database for Sqlite {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let values: Vec<_> = params.iter().map(to_sqlite).collect();
        let n =
            self.lock().execute(&sqlite_sql(sql), rusqlite::params_from_iter(values.iter())).map_err(sqlite_error)?;
        Ok(n as u64)
    }

    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let values: Vec<_> = params.iter().map(to_sqlite).collect();
        let connection = self.lock();
        let mut statement = connection.prepare_cached(&sqlite_sql(sql)).map_err(sqlite_error)?;
        let columns = statement.column_count();
        let rows = statement
            .query_map(rusqlite::params_from_iter(values.iter()), |row| {
                use rusqlite::types::ValueRef;
                (0..columns)
                    .map(|i| {
                        Ok(match row.get_ref(i)? {
                            ValueRef::Null => Value::Text(None),
                            ValueRef::Integer(v) => Value::Int(Some(v)),
                            ValueRef::Real(v) => Value::Real(Some(v)),
                            ValueRef::Text(t) | ValueRef::Blob(t) => {
                                Value::Text(Some(String::from_utf8_lossy(t).into_owned()))
                            }
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Row)
            })
            .map_err(sqlite_error)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sqlite_error)
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.lock().execute_batch(&sqlite_sql(sql)).map_err(sqlite_error)
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

/// PostgreSQL through a few connections (each reopened when the server dropped it), so that
/// concurrent requests do not queue behind one round trip.
pub struct Postgres {
    url: String,
    clients: Vec<Mutex<Option<postgres::Client>>>,
    next: std::sync::atomic::AtomicUsize,
}

/// Connections per process: enough for the API's concurrent requests and a worker.
const POSTGRES_CONNECTIONS: usize = 4;

impl Postgres {
    /// Connects to `url`.
    pub fn connect(url: &str) -> Result<Self, DbError> {
        let db = Self {
            url: url.to_string(),
            clients: (0..POSTGRES_CONNECTIONS).map(|_| Mutex::new(None)).collect(),
            next: Default::default(),
        };
        db.with_client(|_| Ok(()))?;
        Ok(db)
    }

    fn with_client<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, DbError> {
        // A free connection if there is one, else wait for the next in turn.
        let mut guard = match self.clients.iter().find_map(|c| c.try_lock().ok()) {
            Some(guard) => guard,
            None => {
                let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.clients.len();
                self.clients[i].lock().unwrap_or_else(|e| e.into_inner())
            }
        };
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let client = postgres::Client::connect(&self.url, postgres::NoTls)
                .map_err(|e| DbError(format!("cannot connect to PostgreSQL: {e}")))?;
            *guard = Some(client);
        }
        let client = guard.as_mut().expect("connected above");
        f(client).map_err(|e| DbError(e.to_string()))
    }
}

fn postgres_sql(sql: &str) -> String {
    sql.replace("{skip_locked}", "FOR UPDATE SKIP LOCKED")
}

fn to_postgres(v: &Value) -> Box<dyn postgres::types::ToSql + Sync> {
    match v {
        Value::Int(i) => Box::new(*i),
        Value::Text(s) => Box::new(s.clone()),
        Value::Real(r) => Box::new(*r),
    }
}

fn from_postgres(row: &postgres::Row) -> Result<Row, postgres::Error> {
    use postgres::types::Type;
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let t = column.type_();
        values.push(if *t == Type::INT8 {
            Value::Int(row.try_get::<_, Option<i64>>(i)?)
        } else if *t == Type::INT4 {
            Value::Int(row.try_get::<_, Option<i32>>(i)?.map(i64::from))
        } else if *t == Type::FLOAT8 {
            Value::Real(row.try_get::<_, Option<f64>>(i)?)
        } else if *t == Type::NUMERIC || *t == Type::FLOAT4 {
            Value::Real(row.try_get::<_, Option<f32>>(i)?.map(f64::from))
        } else {
            Value::Text(row.try_get::<_, Option<String>>(i)?)
        });
    }
    Ok(Row(values))
}

impl Database for Postgres {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let boxed: Vec<_> = params.iter().map(to_postgres).collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        self.with_client(|c| c.execute(&postgres_sql(sql), &refs))
    }

    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let boxed: Vec<_> = params.iter().map(to_postgres).collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        self.with_client(|c| c.query(&postgres_sql(sql), &refs)?.iter().map(from_postgres).collect())
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.with_client(|c| c.batch_execute(&postgres_sql(sql)))
    }

    fn kind(&self) -> &'static str {
        "postgresql"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_statement_serves_both_dialects() {
        let sql = "UPDATE jobs SET a = $1 WHERE id = (SELECT id FROM jobs WHERE b = $2 LIMIT 1 {skip_locked})";
        assert_eq!(sqlite_sql(sql), "UPDATE jobs SET a = ?1 WHERE id = (SELECT id FROM jobs WHERE b = ?2 LIMIT 1 )");
        assert!(postgres_sql(sql).ends_with("LIMIT 1 FOR UPDATE SKIP LOCKED)"));
    }

    #[test]
    fn sqlite_round_trips_values() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(&dir.path().join("t.db")).unwrap();
        db.batch("CREATE TABLE t (a BIGINT, b TEXT, c DOUBLE PRECISION)").unwrap();
        let n = db.execute("INSERT INTO t VALUES ($1, $2, $3)", &[5.into(), "x".into(), Some(0.5).into()]).unwrap();
        assert_eq!(n, 1);
        let rows = db.query("SELECT a, b, c FROM t WHERE a = $1", &[5.into()]).unwrap();
        assert_eq!((rows[0].int(0), rows[0].text(1), rows[0].real(2)), (Some(5), Some("x".into()), Some(0.5)));
    }
}
