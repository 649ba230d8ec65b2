//! # skyreels-serve
//!
//! SkyReels generation as a service: `skyreels serve` (an HTTP API with its own worker) and
//! `skyreels worker` (more workers on the same queue). Jobs, tokens and progress live in a
//! database — SQLite in the data folder by default, PostgreSQL when several machines share the
//! work — and files (uploads, videos, resume states) in the data folder beside it. Nothing is
//! lost when a process dies: a job whose worker stops renewing its lease is resumed by the next
//! worker from the state saved after its last window.
//!
//! The engine ([`skyreels_core`]) carries no HTTP or database code; this crate is the only one
//! that does.

pub mod db;
pub mod http;
pub mod jobs;
pub mod store;
mod studio;
pub mod worker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skyreels_core::pipelines::generation::{demo_model_dir, RunOptions};

use crate::jobs::DataDir;
use crate::store::Store;
use crate::worker::{Shutdown, Wake, WorkerConfig};

/// Caps on what one job may ask for, and on the queue.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most frames of one video.
    pub max_frames: u64,
    /// Most pixels on either side.
    pub max_side: u64,
    /// Most denoising steps.
    pub max_steps: u64,
    /// Most jobs waiting or running; more are refused with 429.
    pub max_queue: usize,
    /// Whether endless jobs (frames 0, running until cancelled) are accepted.
    pub endless: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_frames: 1457, max_side: 1280, max_steps: 100, max_queue: 1000, endless: false }
    }
}

/// Settings of `skyreels serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen (port 0 picks a free port, printed at start).
    pub listen: SocketAddr,
    /// The data folder.
    pub data: PathBuf,
    /// Database URL; default: SQLite in the data folder.
    pub database: Option<String>,
    /// Model folders offered (default: the demo model).
    pub models: Vec<PathBuf>,
    /// Device of the server's own worker.
    pub run: RunOptions,
    /// Whether the server runs a worker itself.
    pub worker: bool,
    /// Lease of a running job.
    pub lease: Duration,
    /// Request caps.
    pub limits: Limits,
    /// Largest upload in bytes.
    pub max_upload: usize,
}

/// Settings of `skyreels worker`.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The shared data folder.
    pub data: PathBuf,
    /// Database URL; default: SQLite in the data folder.
    pub database: Option<String>,
    /// Model folders this worker runs (default: the demo model).
    pub models: Vec<PathBuf>,
    /// Device.
    pub run: RunOptions,
    /// Lease of a running job.
    pub lease: Duration,
    /// How often to look for work.
    pub poll: Duration,
}

/// The default data folder: `$SKYREELS_DATA`, else `$XDG_DATA_HOME/skyreels`, else
/// `~/.local/share/skyreels`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SKYREELS_DATA") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("skyreels");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/skyreels")
}

/// The database a data folder uses unless told otherwise.
pub fn database_url(data: &Path, database: Option<&str>) -> String {
    match database {
        Some(url) => url.to_string(),
        None => format!("sqlite:{}", data.join("skyreels.db").display()),
    }
}

/// Opens the data folder (creating it) and its database.
pub fn open_store(data: &Path, database: Option<&str>) -> Result<Store, String> {
    std::fs::create_dir_all(data).map_err(|e| format!("cannot create the data folder {}: {e}", data.display()))?;
    Store::open(&database_url(data, database)).map_err(|e| e.to_string())
}

/// Models by name (the folder's name); the first is the default.
pub fn named_models(models: &[PathBuf]) -> Result<Vec<(String, PathBuf)>, String> {
    let folders = if models.is_empty() { vec![demo_model_dir()] } else { models.to_vec() };
    let mut named: Vec<(String, PathBuf)> = Vec::new();
    for folder in folders {
        let folder = std::fs::canonicalize(&folder)
            .map_err(|e| format!("the model folder {} cannot be opened: {e}", folder.display()))?;
        if !folder.join("model_index.json").is_file() && !folder.join("config.json").is_file() {
            return Err(format!("{} is not a model folder", folder.display()));
        }
        let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if named.iter().any(|(n, _)| *n == name) {
            return Err(format!("two models are named `{name}`: their folders need different names"));
        }
        named.push((name, folder));
    }
    Ok(named)
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs `skyreels serve` until interrupted (Ctrl-C or SIGTERM; a running job is released to
/// be resumed, not lost).
pub fn serve(config: ServeConfig) -> Result<(), String> {
    let data = config.data.clone();
    if config.worker {
        // Refuse a device this build or machine lacks now, not when the first job runs.
        skyreels_core::pipelines::generation::Devices::open(&config.run).map_err(|e| e.to_string())?;
    }
    let store = Arc::new(open_store(&data, config.database.as_deref())?);
    let models = named_models(&config.models)?;
    // One server per data folder and host: its worker's id is then stable across restarts,
    // so jobs a killed server held are resumed at once instead of after their lease.
    let host = host_name();
    let lock_path = data.join(format!("serve-{host}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    lock.try_lock()
        .map_err(|_| format!("another skyreels serve on this machine uses the data folder {}", data.display()))?;
    let worker_id = format!("serve@{host}");
    store.release_worker(&worker_id).map_err(|e| e.to_string())?;

    let wake = Arc::new(Wake::default());
    let shutdown = Shutdown::default();
    let worker_thread = if config.worker {
        let worker_config = WorkerConfig {
            id: worker_id,
            models: models.iter().cloned().collect::<BTreeMap<_, _>>(),
            data: DataDir(data.clone()),
            run: config.run,
            lease: config.lease,
            poll: Duration::from_millis(500),
            cache: 1,
        };
        let (store, wake, shutdown) = (store.clone(), wake.clone(), shutdown.clone());
        Some(std::thread::spawn(move || worker::run(worker_config, store, wake, shutdown)))
    } else {
        None
    };
    let app = Arc::new(http::App {
        store,
        data: DataDir(data),
        models,
        limits: config.limits.clone(),
        wake,
        max_upload: config.max_upload,
    });
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the server: {e}"))?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        println!("listening on http://{address}");
        axum::serve(listener, http::router(app, config.max_upload))
            .with_graceful_shutdown(stop_signal())
            .await
            .map_err(|e| format!("the server stopped: {e}"))
    });
    shutdown.request();
    if let Some(thread) = worker_thread {
        match thread.join() {
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the worker stopped unexpectedly".into()),
            Ok(Ok(())) => {}
        }
    }
    drop(lock);
    served
}

async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// Runs `skyreels worker` until interrupted.
pub fn work(options: WorkerOptions) -> Result<(), String> {
    let store = Arc::new(open_store(&options.data, options.database.as_deref())?);
    let models = named_models(&options.models)?;
    let config = WorkerConfig {
        id: format!("worker@{}:{}", host_name(), &store::random_hex(4)),
        models: models.into_iter().collect(),
        data: DataDir(options.data),
        run: options.run,
        lease: options.lease,
        poll: options.poll,
        cache: 1,
    };
    println!("worker {} ready ({} database)", config.id, store.kind());
    let shutdown = Shutdown::default();
    let stopper = shutdown.clone();
    let signals = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            runtime.block_on(stop_signal());
            stopper.request();
        }
    });
    let result = worker::run(config, store, Arc::new(Wake::default()), shutdown);
    drop(signals);
    result
}
