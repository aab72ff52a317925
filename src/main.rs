//! The `rtmp-guard` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use rtmp_guard::config::{Config, DEFAULT_CONFIG_NAME};
use rtmp_guard::verdict::Kind;

/// jemalloc rather than glibc's malloc: a session is a few dozen small
/// objects that outlive the handshake's and the origin dial's transient
/// ones, and glibc keeps the holes those leave between them resident for
/// good (at 1,000 viewers opened 200 at a time, 2.7 KiB a viewer).
/// jemalloc keeps each size class in its own pages and gives empty pages
/// back. One arena and no thread caches: the guard has two busy threads,
/// and per-thread caches hold memory per thread.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation (`MALLOC_CONF` syntax).
/// Empty pages go back after a second, from jemalloc's own thread: at once
/// (decay 0), every 64 KiB relay buffer freed past the pool's bound was
/// purged and faulted in again, which halved relay throughput per CPU.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"narenas:1,tcache:false,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// An inline, RTMP-aware reverse proxy that enforces a streaming host's
/// acceptable-use rules in front of RTMP origins.
///
/// With no command, runs the guard: on --config FILE, or on the embedded
/// default config (identical to config/rtmp-guard.toml: RTMP on
/// 0.0.0.0:1935, app "live" to an origin at 127.0.0.1:1936, metrics on
/// http://127.0.0.1:9935/metrics).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Config file to run. Without it, the embedded default runs.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validates a config file and exits: 0 if valid; otherwise non-zero,
    /// printing the file, line, key and why.
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
    },
    /// Prints a signed, expiring stream URL for an app in `token` mode, for
    /// one role.
    Token {
        /// The config holding the app (and its token_secret_file).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The app, as configured.
        #[arg(long)]
        app: String,
        /// The stream name.
        #[arg(long)]
        stream: String,
        /// What the URL may do: publish or play, never both.
        #[arg(long, value_enum)]
        role: Role,
        /// How long the URL stays valid, like "1h" or "30m".
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Bind the URL to this client address.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// Host (and port) for the printed URL.
        #[arg(long, default_value = "127.0.0.1:1935")]
        host: String,
    },
    /// Prints a new, strong random stream key for an app in `stream_key`
    /// mode, as a keys file line: `NAME = sk_...`. The publisher sends the
    /// key as its stream name; viewers play NAME.
    Key {
        /// The public name the key publishes as.
        #[arg(long)]
        name: String,
    },
}

/// The role a signed URL is issued for.
#[derive(Clone, Copy, ValueEnum)]
enum Role {
    /// An encoder's URL: it can publish the stream, not play it.
    Publish,
    /// A viewer's URL: it can play the stream, not publish it.
    Play,
}

impl From<Role> for Kind {
    fn from(role: Role) -> Kind {
        match role {
            Role::Publish => Kind::Publish,
            Role::Play => Kind::Play,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Token {
            config,
            app,
            stream,
            role,
            ttl,
            ip,
            host,
        }) => token(&config, &app, &stream, role.into(), &ttl, ip, &host),
        Some(Command::Key { name }) => key(&name),
        None => run(cli.config, cli.log_format),
    }
}

/// `rtmp-guard token`: the operator's tool for issuing signed URLs.
fn token(
    file: &std::path::Path,
    app: &str,
    stream: &str,
    role: Kind,
    ttl: &str,
    ip: Option<std::net::IpAddr>,
    host: &str,
) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("{msg}");
        ExitCode::from(2)
    };
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let Some(secret) = config.app(app).and_then(|a| a.token_secret.clone()) else {
        return fail(format!(
            "app {app:?} has no token_secret_file in {}",
            file.display()
        ));
    };
    let ttl = match rtmp_guard::config::parse_duration(ttl) {
        Ok(d) => d,
        Err(e) => return fail(e.0),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires = now + ttl.as_secs();
    let query =
        rtmp_guard::policy::token::sign(secret.0.as_bytes(), app, stream, expires, ip, role);
    println!("rtmp://{host}/{app}/{stream}?{query}");
    ExitCode::SUCCESS
}

/// `rtmp-guard key`: a keys file line with a new key for `name`.
fn key(name: &str) -> ExitCode {
    if !rtmp_guard::config::valid_public_name(name) {
        eprintln!("{name:?} cannot be a public name: it must be plain, without '?', '/', '=', '#' or spaces");
        return ExitCode::from(2);
    }
    println!("{name} = {}", rtmp_guard::config::generate_stream_key());
    ExitCode::SUCCESS
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            println!(
                "{}: ok ({} app(s), {} upstream(s))",
                file.display(),
                config.apps.len(),
                config.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn run(path: Option<PathBuf>, format: LogFormat) -> ExitCode {
    let _flush_logs = rtmp_guard::logging::init(match format {
        LogFormat::Text => rtmp_guard::logging::Format::Text,
        LogFormat::Json => rtmp_guard::logging::Format::Json,
    });
    let (config, source) = match &path {
        Some(p) => (Config::load(p), p.display().to_string()),
        None => (Config::embedded_default(), DEFAULT_CONFIG_NAME.to_string()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    raise_file_limit();
    let workers = match rtmp_guard::workers::Workers::per_cpu() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("cannot start the worker threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The listeners, the metrics and admin servers and the upkeep: the
    // sessions run on the workers.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let running = match rtmp_guard::start_with(config, path, workers).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let listen: Vec<String> = running.rtmp_addrs.iter().map(|a| a.to_string()).collect();
        let tls: Vec<String> = running.rtmps_addrs.iter().map(|a| a.to_string()).collect();
        let rtmps = if tls.is_empty() {
            String::new()
        } else {
            format!(", RTMPS on {}", tls.join(", "))
        };
        tracing::info!(
            event = "started",
            version = env!("CARGO_PKG_VERSION"),
            config = %source,
            listen = %listen.join(","),
            tls_listen = %tls.join(","),
            metrics = %format!("http://{}/metrics", running.metrics_addr),
            "rtmp-guard running config {source}, RTMP on {}{rtmps}, metrics on http://{}/metrics",
            listen.join(", "),
            running.metrics_addr
        );
        serve_signals(&running).await;
        let drain = running.guard.config().server.drain_timeout;
        running.drain(drain).await;
        tracing::info!(event = "stopping", "rtmp-guard stopping");
        running.stop();
        ExitCode::SUCCESS
    })
}

/// Each relayed session holds two sockets; raise the soft descriptor limit
/// to the hard one so `max_connections` is not capped by a default of 1024.
fn raise_file_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// Reloads on SIGHUP (and reopens the audit log for logrotate); returns on
/// SIGTERM or Ctrl-C, when the guard drains.
async fn serve_signals(running: &rtmp_guard::Running) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                running.guard.audit.reopen();
                let _ = rtmp_guard::lifecycle::reload(&running.guard);
            }
        }
    }
}
