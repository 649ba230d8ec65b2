//! A worker: claims jobs from the queue one at a time and runs them on its device.
//!
//! The server runs one in-process; `skyreels worker` runs one in its own process, on this
//! machine (same SQLite database) or another (PostgreSQL and a shared data folder). While a job
//! runs, a heartbeat thread renews the lease and passes on cancellation; a job whose state file
//! exists (its previous worker was killed) is resumed from it, so the finished video is the
//! same, byte for byte, as an uninterrupted run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use skyreels_core::media::RgbFrame;
use skyreels_core::pipelines::generation::{
    write_atomically, CancelToken, Devices, Event, Generation, GenerationError, ModelCache, RunOptions,
};

use crate::jobs::{to_generation_request, DataDir, JobRequest, Progress};
use crate::store::{state, JobEnd, JobRow, Lease, Store};

/// Wakes an idle worker when a job is queued (the server's own worker reacts at once;
/// other processes poll).
#[derive(Default)]
pub struct Wake {
    queued: Mutex<bool>,
    signal: Condvar,
}

impl Wake {
    /// Signals that there may be work.
    pub fn notify(&self) {
        *self.queued.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.signal.notify_all();
    }

    /// Waits for a signal or `timeout`.
    fn wait(&self, timeout: Duration) {
        let guard = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        let (mut queued, _) =
            self.signal.wait_timeout_while(guard, timeout, |q| !*q).unwrap_or_else(|e| e.into_inner());
        *queued = false;
    }
}

/// A worker's settings.
#[derive(Clone)]
pub struct WorkerConfig {
    /// Unique among the queue's workers.
    pub id: String,
    /// Model names this worker runs, with their folders.
    pub models: BTreeMap<String, PathBuf>,
    /// The shared data folder.
    pub data: DataDir,
    /// Device choices.
    pub run: RunOptions,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// How often to look for work when idle.
    pub poll: Duration,
    /// Loaded models kept between jobs.
    pub cache: usize,
}

/// Stops a worker: after its current job (`drain`) or at the next step, leaving the job to be
/// resumed by the next worker.
#[derive(Default, Clone)]
pub struct Shutdown {
    requested: Arc<AtomicBool>,
    current: Arc<Mutex<Option<CancelToken>>>,
}

impl Shutdown {
    /// Asks the worker to stop now; a running job is released, not cancelled.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Some(token) = self.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            token.cancel();
        }
    }

    fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// Runs jobs until `shutdown` is requested. Fails only when the device cannot be opened.
pub fn run(config: WorkerConfig, store: Arc<Store>, wake: Arc<Wake>, shutdown: Shutdown) -> Result<(), String> {
    let devices = Devices::open(&config.run).map_err(|e| e.to_string())?;
    let mut cache = ModelCache::new(config.cache);
    let names: Vec<String> = config.models.keys().cloned().collect();
    let lease_ms = config.lease.as_millis() as i64;
    while !shutdown.is_requested() {
        sweep_deletions(&store, &config.data);
        match store.claim(&config.id, &names, lease_ms) {
            Ok(Some(job)) => run_job(&config, &store, &devices, &mut cache, job, &shutdown),
            Ok(None) => wake.wait(config.poll),
            Err(e) => {
                eprintln!("worker {}: {e}", config.id);
                std::thread::sleep(config.poll);
            }
        }
    }
    Ok(())
}

/// Removes jobs whose deletion was requested while their worker died.
fn sweep_deletions(store: &Store, data: &DataDir) {
    if let Ok(ids) = store.abandoned_deletions(crate::store::now_ms()) {
        for id in ids {
            let _ = std::fs::remove_dir_all(data.job(&id));
            let _ = store.remove_job(&id);
        }
    }
}

fn run_job(
    config: &WorkerConfig,
    store: &Arc<Store>,
    devices: &Devices,
    cache: &mut ModelCache,
    job: JobRow,
    shutdown: &Shutdown,
) {
    let cancel = CancelToken::default();
    *shutdown.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(cancel.clone());
    let lost = Arc::new(AtomicBool::new(false));
    let finished = Arc::new((Mutex::new(false), Condvar::new()));
    let heartbeat = {
        let (store, id, worker) = (store.clone(), job.id.clone(), config.id.clone());
        let (cancel, lost, finished, lease) = (cancel.clone(), lost.clone(), finished.clone(), config.lease);
        std::thread::spawn(move || loop {
            let (done, signal) = &*finished;
            let guard = done.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = signal.wait_timeout_while(guard, lease / 4, |d| !*d).unwrap_or_else(|e| e.into_inner());
            if *guard {
                return;
            }
            drop(guard);
            let until = crate::store::now_ms() + lease.as_millis() as i64;
            match store.renew(&id, &worker, until) {
                Ok(Lease::Held { cancel: false }) => {}
                Ok(Lease::Held { cancel: true }) => cancel.cancel(),
                Ok(Lease::Lost) => {
                    lost.store(true, Ordering::SeqCst);
                    cancel.cancel();
                    return;
                }
                Err(e) => eprintln!("worker {worker}: cannot renew the lease of job {id}: {e}"),
            }
        })
    };
    let result = generate(config, store, devices, cache, &job, &cancel);
    {
        let (done, signal) = &*finished;
        *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        signal.notify_all();
    }
    let _ = heartbeat.join();
    *shutdown.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if lost.load(Ordering::SeqCst) {
        // Another worker holds the job now (or it was deleted): its files are not ours to touch.
        return;
    }
    let end = match result {
        Ok(outcome) => JobEnd {
            state: state::DONE,
            error: None,
            frames: Some(outcome.frames as i64),
            seconds: Some(outcome.seconds),
            peak_mib: outcome.peak_device_mib.or_else(skyreels_core::memory::peak_rss_mib).map(|m| m as i64),
        },
        Err(GenerationError::Cancelled) if shutdown.is_requested() => {
            // Left running with an expired lease: the next worker resumes it from its state.
            let _ = store.renew(&job.id, &config.id, 0);
            return;
        }
        Err(GenerationError::Cancelled) => {
            if store.job(&job.id).ok().flatten().is_some_and(|j| j.state == state::DELETING) {
                let _ = std::fs::remove_dir_all(config.data.job(&job.id));
                let _ = store.remove_job(&job.id);
                return;
            }
            JobEnd { state: state::CANCELLED, error: None, frames: None, seconds: None, peak_mib: None }
        }
        Err(e) => {
            JobEnd { state: state::FAILED, error: Some(e.to_string()), frames: None, seconds: None, peak_mib: None }
        }
    };
    if let Err(e) = store.finish(&job.id, &config.id, &end) {
        eprintln!("worker {}: cannot record the end of job {}: {e}", config.id, job.id);
    }
}

fn generate(
    config: &WorkerConfig,
    store: &Store,
    devices: &Devices,
    cache: &mut ModelCache,
    job: &JobRow,
    cancel: &CancelToken,
) -> Result<skyreels_core::pipelines::generation::GenerationOutcome, GenerationError> {
    let request: JobRequest = serde_json::from_str(&job.request)
        .map_err(|e| GenerationError::Settings(format!("the stored job is not readable: {e}")))?;
    let model_dir = config
        .models
        .get(&job.model)
        .ok_or_else(|| GenerationError::Model(format!("this worker has no model `{}`", job.model)))?;
    let job_dir = config.data.job(&job.id);
    let output = job_dir.join(&job.output_name);
    let generation = if Generation::can_resume(&output) {
        Generation::resume(&output)?
    } else {
        let request = to_generation_request(&request, &job.owner, &job_dir, &job.output_name, &config.data, model_dir)
            .map_err(|e| GenerationError::Settings(e.message))?;
        // Whatever an attempt that died before its first window left behind is replaced.
        Generation::new(&request, true)?
    };
    let mut reporter = Reporter::new(store, job, &config.id, &job_dir, generation.notices());
    generation.run(cache, devices, &mut |event| reporter.event(&event), cancel)
}

/// Turns engine events into the job's stored progress (at most a few writes a second, and
/// always at window ends) and its preview frame.
struct Reporter<'a> {
    store: &'a Store,
    job: &'a str,
    worker: &'a str,
    preview_path: PathBuf,
    progress: Progress,
    steps_at_start: u64,
    started: Instant,
    last_write: Option<Instant>,
}

impl<'a> Reporter<'a> {
    fn new(store: &'a Store, job: &'a JobRow, worker: &'a str, job_dir: &Path, notices: &[String]) -> Self {
        let preview_path = job_dir.join("preview.png");
        let progress = Progress { preview: preview_path.is_file(), notices: notices.to_vec(), ..Default::default() };
        Self {
            store,
            job: &job.id,
            worker,
            preview_path,
            progress,
            steps_at_start: 0,
            started: Instant::now(),
            last_write: None,
        }
    }

    fn event(&mut self, event: &Event<'_>) {
        let p = &mut self.progress;
        let mut urgent = true;
        match *event {
            Event::Notice(n) => p.notices.push(n.to_string()),
            Event::Stage(s) => p.stage = Some(s.to_string()),
            Event::Started { windows, total_rows, windows_done, rows_done } => {
                p.stage = None;
                p.windows = windows.map(|w| w as u64);
                p.total_steps = total_rows.map(|r| r as u64);
                p.window = Some(windows_done as u64 + 1);
                p.steps_done = Some(rows_done as u64);
                self.steps_at_start = rows_done as u64;
                self.started = Instant::now();
            }
            Event::Step { window, row, rows } => {
                p.window = Some(window as u64 + 1);
                p.step = Some(row as u64);
                p.steps = Some(rows as u64);
                let done = p.steps_done.unwrap_or(0) + 1;
                p.steps_done = Some(done);
                let this_attempt = done.saturating_sub(self.steps_at_start).max(1);
                p.eta_seconds = p.total_steps.map(|total| {
                    self.started.elapsed().as_secs_f64() / this_attempt as f64 * total.saturating_sub(done) as f64
                });
                // The first step is reported at once (clients wait for it); later ones throttled.
                urgent = done == self.steps_at_start + 1;
            }
            Event::WindowDone { frames, last_frame, .. } => {
                p.frames = Some(frames);
                if let Some(frame) = last_frame {
                    p.preview = write_preview(&self.preview_path, frame).is_ok() || p.preview;
                }
            }
            Event::Done(outcome) => {
                p.frames = Some(outcome.frames);
                p.eta_seconds = Some(0.0);
            }
        }
        let due = self.last_write.is_none_or(|t| t.elapsed() >= Duration::from_millis(250));
        if urgent || due {
            self.last_write = Some(Instant::now());
            let steps = self.progress.steps_done.unwrap_or(0) as i64;
            let value = serde_json::to_value(&self.progress).unwrap_or_default();
            if let Err(e) = self.store.set_progress(self.job, self.worker, &value, steps) {
                eprintln!("worker {}: cannot record progress of job {}: {e}", self.worker, self.job);
            }
        }
    }
}

fn write_preview(path: &Path, frame: &RgbFrame) -> Result<(), String> {
    let image = image::RgbImage::from_raw(frame.width, frame.height, frame.data.clone()).ok_or("bad frame")?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).map_err(|e| e.to_string())?;
    write_atomically(path, bytes.get_ref()).map_err(|e| e.to_string())
}
