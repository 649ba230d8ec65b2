//! `skyreels serve` (the HTTP job API with its own worker), its `token` commands, and
//! `skyreels worker` (another worker on the same queue).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use skyreels_core::pipelines::generation::RunOptions;
use skyreels_serve::{default_data_dir, Limits, ServeConfig, WorkerOptions};

/// Where the queue lives (shared by `serve`, `serve token` and `worker`).
#[derive(Args, Debug, Clone)]
pub struct QueueArgs {
    /// The data folder: the SQLite database (by default), uploads, videos and resume states.
    /// [default: $SKYREELS_DATA, else ~/.local/share/skyreels]
    #[arg(long, global = true)]
    pub data: Option<PathBuf>,
    /// The job database: `postgres://user@host/db` to share the queue between machines (the data
    /// folder must then be shared too), or `sqlite:PATH`. [default: SQLite in the data folder]
    #[arg(long, global = true)]
    pub database: Option<String>,
}

impl QueueArgs {
    fn data(&self) -> PathBuf {
        self.data.clone().unwrap_or_else(default_data_dir)
    }
}

/// Flags of the workers (the server's own and `skyreels worker`).
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// A model folder jobs may use, named by its folder name (repeat for several; the first is
    /// the default). [default: the built-in demo model]
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    #[command(flatten)]
    pub devices: crate::device::RunDeviceArgs,
    /// Seconds a worker may go silent before its job is resumed by another.
    #[arg(long, default_value_t = 30.0)]
    pub lease_seconds: f64,
}

impl WorkerArgs {
    fn run_options(&self) -> RunOptions {
        self.devices.run_options()
    }

    fn lease(&self) -> Result<Duration, String> {
        if !(self.lease_seconds.is_finite() && (0.5..=86_400.0).contains(&self.lease_seconds)) {
            return Err("--lease-seconds must be between 0.5 and 86400".into());
        }
        Ok(Duration::from_secs_f64(self.lease_seconds))
    }
}

/// Flags of `skyreels serve`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeArgs {
    #[command(subcommand)]
    command: Option<ServeCommand>,
    #[command(flatten)]
    queue: QueueArgs,
    #[command(flatten)]
    worker: WorkerArgs,
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Do not run jobs here; only `skyreels worker` processes do.
    #[arg(long)]
    no_worker: bool,
    /// Most frames a job may ask for.
    #[arg(long, default_value_t = Limits::default().max_frames)]
    max_frames: u64,
    /// Most pixels on either side of a video.
    #[arg(long, default_value_t = Limits::default().max_side)]
    max_side: u64,
    /// Most denoising steps a job may ask for.
    #[arg(long, default_value_t = Limits::default().max_steps)]
    max_steps: u64,
    /// Most jobs waiting or running; more are refused with 429.
    #[arg(long, default_value_t = Limits::default().max_queue)]
    max_queue: usize,
    /// Accept endless jobs (frames 0): they run until cancelled, holding a worker meanwhile.
    #[arg(long)]
    endless: bool,
    /// Largest upload, in MiB.
    #[arg(long, default_value_t = 256)]
    max_upload_mib: usize,
}

#[derive(Subcommand, Debug)]
enum ServeCommand {
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token and print it once (only its hash is stored).
    Create {
        /// Who it is for.
        #[arg(long)]
        name: String,
        /// Sees and manages every user's jobs.
        #[arg(long)]
        admin: bool,
    },
    /// List the tokens' names.
    List,
    /// Delete a token: its requests are refused from now on (its jobs stay).
    Delete {
        /// The token's name.
        name: String,
    },
}

/// Runs `skyreels serve`.
pub fn serve(args: ServeArgs) -> Result<(), String> {
    if let Some(ServeCommand::Token(command)) = &args.command {
        return token(&args.queue, command);
    }
    let limits = Limits {
        max_frames: args.max_frames,
        max_side: args.max_side,
        max_steps: args.max_steps,
        max_queue: args.max_queue,
        endless: args.endless,
    };
    skyreels_serve::serve(ServeConfig {
        listen: args.listen,
        data: args.queue.data(),
        database: args.queue.database.clone(),
        models: args.worker.models.clone(),
        run: args.worker.run_options(),
        worker: !args.no_worker,
        lease: args.worker.lease()?,
        limits,
        max_upload: args.max_upload_mib.saturating_mul(1 << 20),
    })
}

fn token(queue: &QueueArgs, command: &TokenCommand) -> Result<(), String> {
    let store = skyreels_serve::open_store(&queue.data(), queue.database.as_deref())?;
    match command {
        TokenCommand::Create { name, admin } => {
            let (token, secret) = store.create_token(name, *admin).map_err(|e| e.to_string())?;
            eprintln!(
                "token `{}`{} created; it is shown only now:",
                token.name,
                if token.admin { " (admin)" } else { "" }
            );
            println!("{secret}");
        }
        TokenCommand::List => {
            for t in store.tokens().map_err(|e| e.to_string())? {
                println!("{}{}", t.name, if t.admin { " (admin)" } else { "" });
            }
        }
        TokenCommand::Delete { name } => {
            if !store.delete_token(name).map_err(|e| e.to_string())? {
                return Err(format!("there is no token named `{name}`"));
            }
            eprintln!("token `{name}` deleted");
        }
    }
    Ok(())
}

/// Flags of `skyreels worker`.
#[derive(Args, Debug)]
pub struct WorkerCommandArgs {
    #[command(flatten)]
    queue: QueueArgs,
    #[command(flatten)]
    worker: WorkerArgs,
    /// Seconds between looks at the queue when idle.
    #[arg(long, default_value_t = 1.0)]
    poll_seconds: f64,
}

/// Runs `skyreels worker`.
pub fn worker(args: WorkerCommandArgs) -> Result<(), String> {
    if !(args.poll_seconds.is_finite() && (0.01..=3600.0).contains(&args.poll_seconds)) {
        return Err("--poll-seconds must be between 0.01 and 3600".into());
    }
    skyreels_serve::work(WorkerOptions {
        data: args.queue.data(),
        database: args.queue.database.clone(),
        models: args.worker.models.clone(),
        run: args.worker.run_options(),
        lease: args.worker.lease()?,
        poll: Duration::from_secs_f64(args.poll_seconds),
    })
}
