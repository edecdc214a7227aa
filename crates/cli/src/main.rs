//! `kindling`: the worker daemon, its command-line client, and the benchmarks (`kindling-bench`).

mod examples;
mod nosql;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use hyper::Method;
use kindling_api::client::{self, Client};
use kindling_api::StartMethod;
use kindling_worker::config::Config;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "kindling",
    version,
    about = "Serverless functions with millisecond cold starts"
)]
struct Cli {
    /// Address of the worker's API (for client commands).
    #[arg(
        long,
        global = true,
        env = "KINDLING_ADDR",
        default_value = "127.0.0.1:5000"
    )]
    addr: SocketAddr,
    /// Worker root (default /var/lib/kindling): where `up` keeps its state and the worker's
    /// admin token is, which client commands send.
    #[arg(long, global = true, env = "KINDLING_ROOT")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The worker root when neither --root nor KINDLING_ROOT says.
const DEFAULT_ROOT: &str = "/var/lib/kindling";

#[derive(Subcommand)]
enum Command {
    /// Start a worker (in the foreground unless --detach).
    Up(UpArgs),
    /// Stop a detached worker (its pid file is under --root).
    Down,
    /// Deploy a function directory (OpenLambda f.py or SeBS function.py).
    Deploy {
        dir: PathBuf,
        /// Function name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Invoke a function and print its result.
    Invoke {
        name: String,
        /// JSON event.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Force a start method: cold, fork or switch (warm: the default policy).
        #[arg(long)]
        start: Option<StartMethod>,
        /// Print the start method and timing breakdown to stderr.
        #[arg(long, short)]
        verbose: bool,
    },
    /// List deployed functions.
    Ls,
    /// Remove a function.
    Rm { name: String },
    /// Print what a function's instances wrote to stdout and stderr (its log).
    Logs {
        name: String,
        /// Keep printing lines as they are written.
        #[arg(long, short)]
        follow: bool,
        /// How many of the last lines to print first (at most 10000).
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
    /// Show the worker's status and counters.
    Status,
    /// Print the worker's admin token (`<root>/token`; only root, or the worker's admin_group,
    /// may read it), for `Authorization: Bearer <token>` in scripts and curl.
    Token,
    /// Base root filesystems.
    Base {
        #[command(subcommand)]
        command: BaseCommand,
    },
    /// The package store.
    Pkg {
        #[command(subcommand)]
        command: PkgCommand,
    },
    /// Functions' NoSQL tables: declare, list, drop; load and read items.
    Nosql {
        #[command(subcommand)]
        command: nosql::NosqlCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: kindling_bench::BenchCommand,
    },
    /// Internal: the sandbox spawner (started by the worker).
    #[command(name = "__spawner", hide = true)]
    Spawner,
}

#[derive(clap::Args)]
struct UpArgs {
    /// Listen address (default 127.0.0.1:5000).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run in the background; logs go to <root>/worker.log.
    #[arg(long)]
    detach: bool,
    /// Deploy the example functions at start.
    #[arg(long)]
    examples: bool,
}

#[derive(Subcommand)]
enum PkgCommand {
    /// List installed packages with their size and users.
    Ls,
    /// Remove one package (refused while a function uses it).
    Rm {
        /// `<name>==<version>`
        package: String,
    },
    /// Remove every package no deployed function uses.
    Gc,
}

#[derive(Subcommand)]
enum BaseCommand {
    /// Build a base root filesystem (default debian-python) if it is missing; it goes to
    /// <root>/base/<name> (or the config's base_dir).
    Build {
        #[arg(default_value = kindling_worker::base::DEFAULT_BASE)]
        name: String,
        /// Config file (for `root` and `base_dir`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Command::Spawner = cli.command {
        kindling_sandbox::spawner::serve_stdin();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("KINDLING_LOG")
        // s3s logs every refused S3 request (a missing key, a bad signature) as an error; the
        // S3 API logs the failures an operator must act on itself.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,s3s=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("kindling: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> Result<()> {
    let root = cli.root.clone();
    let root_or_default = || root.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    match cli.command {
        Command::Up(args) => up(args, root),
        Command::Down => down(&root_or_default()),
        Command::Token => {
            let path = root_or_default().join(kindling_api::TOKEN_FILE);
            let token = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read the admin token at {} (only root, or the worker's admin_group, \
                     may; the worker creates it at its first start)",
                    path.display()
                )
            })?;
            println!("{}", token.trim());
            Ok(())
        }
        Command::Base {
            command: BaseCommand::Build { name, config },
        } => {
            let cfg = load_config(config.as_deref(), root, None)?;
            let base = kindling_worker::base::build(&cfg.base_dir(), &name)?;
            println!(
                "base {} ready at {} (python {}, {})",
                base.info.name,
                base.rootfs.display(),
                base.info.python_version,
                base.info.platform
            );
            Ok(())
        }
        Command::Spawner => unreachable!("handled in main"),
        command => {
            client::set_token(client::find_token(&root_or_default()));
            runtime()?.block_on(client_command(cli.addr, command))
        }
    }
}

fn load_config(
    path: Option<&Path>,
    root: Option<PathBuf>,
    listen: Option<SocketAddr>,
) -> Result<Config> {
    let mut cfg = match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(r) = root {
        cfg.root = std::path::absolute(r)?;
    }
    if let Some(l) = listen {
        cfg.listen = l;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn up(args: UpArgs, root: Option<PathBuf>) -> Result<()> {
    let cfg = load_config(args.config.as_deref(), root, args.listen)?;
    if args.detach {
        return detach(&cfg, &args);
    }
    let program = std::env::current_exe().context("cannot find the kindling binary")?;
    let worker = kindling_worker::daemon::Worker::start(cfg.clone(), &program)?;
    let pidfile = cfg.root.join("worker.pid");
    std::fs::write(&pidfile, std::process::id().to_string())
        .with_context(|| format!("cannot write {}", pidfile.display()))?;
    if args.examples {
        for (name, files) in examples::EXAMPLES {
            let packed = examples::pack(files)?;
            let d = worker.deploy_function(name, &packed, &|_| ())?;
            tracing::info!(function = name, changed = d.changed, "example deployed");
        }
    }
    let rt = runtime()?;
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        tracing::info!(listen = %cfg.listen, "serving the API");
        tokio::spawn(worker.clone().housekeeping());
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            tracing::info!("shutting down");
        };
        kindling_worker::http::serve(worker.clone(), listener, shutdown).await;
        Ok::<(), anyhow::Error>(())
    });
    let w = worker.clone();
    rt.block_on(async { tokio::task::spawn_blocking(move || w.shutdown()).await })?;
    let _ = std::fs::remove_file(&pidfile);
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Starts `kindling up` again in the background and waits until it answers.
fn detach(cfg: &Config, args: &UpArgs) -> Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(&cfg.root)?;
    let log_path = cfg.root.join("worker.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("up")
        .arg("--root")
        .arg(&cfg.root)
        .arg("--listen")
        .arg(cfg.listen.to_string());
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    if args.examples {
        cmd.arg("--examples");
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let rt = runtime()?;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the worker exited ({status}); see {}", log_path.display());
        }
        let ready = rt.block_on(async {
            let mut c = Client::new(cfg.listen);
            c.get("/status")
                .await
                .map(|r| r.status.is_success())
                .unwrap_or(false)
        });
        if ready {
            println!(
                "worker running (pid {}) on {}; logs in {}",
                child.id(),
                cfg.listen,
                log_path.display()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the worker did not become ready; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first 12 characters of a version hash, as listings show it.
fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn down(root: &Path) -> Result<()> {
    let pidfile = root.join("worker.pid");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .with_context(|| {
            format!(
                "no worker pid file at {}; is a worker running?",
                pidfile.display()
            )
        })?
        .trim()
        .parse()
        .context("malformed pid file")?;
    kindling_sandbox::process::signal(pid, 15)
        .with_context(|| format!("cannot signal worker {pid}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            bail!("worker {pid} did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("worker {pid} stopped");
    Ok(())
}

async fn client_command(addr: SocketAddr, command: Command) -> Result<()> {
    let mut c = Client::new(addr);
    match command {
        Command::Deploy { dir, name } => {
            let name = match name {
                Some(n) => n,
                None => std::path::absolute(&dir)?
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        anyhow!("cannot derive a name from {}; use --name", dir.display())
                    })?,
            };
            if !dir.is_dir() {
                bail!("{} is not a directory", dir.display());
            }
            let packed = kindling_worker::archive::pack_dir(&dir)
                .with_context(|| format!("cannot pack {}", dir.display()))?;
            let d = c
                .deploy(&name, packed, |progress| eprintln!("{name}: {progress}"))
                .await?;
            let what = if d.changed { "deployed" } else { "unchanged" };
            println!(
                "{name}: {what} ({} format, version {}, {} packages, {} installed)",
                d.format.as_str(),
                short_hash(&d.hash),
                d.packages.len(),
                d.installed.len()
            );
        }
        Command::Invoke {
            name,
            data,
            start,
            verbose,
        } => {
            let r = c.invoke(&name, data.into_bytes(), start).await?;
            if verbose {
                let info = r.run_info();
                eprintln!(
                    "start={} timing={}",
                    info.start.map_or("-", StartMethod::as_str),
                    info.timing.map_or_else(|| "-".to_string(), |t| t.header())
                );
            }
            let r = r.ok()?;
            println!("{}", r.text());
        }
        Command::Ls => {
            println!("{:<24} {:<10} {:<14}", "NAME", "FORMAT", "VERSION");
            for f in c.functions().await? {
                println!(
                    "{:<24} {:<10} {:<14}",
                    f.name,
                    f.format.as_str(),
                    short_hash(&f.hash)
                );
            }
        }
        Command::Rm { name } => {
            c.remove(&name).await?;
            println!("{name}: removed");
        }
        Command::Logs { name, follow, tail } => {
            use std::io::Write;
            let r = c.get(&format!("/logs/{name}?tail={tail}")).await?.ok()?;
            if !follow {
                std::io::stdout().write_all(&r.body)?;
                return Ok(());
            }
            // Checked above; now the same tail again, and what follows it.
            let mut out = std::io::stdout();
            let status = c
                .request_lines(
                    Method::GET,
                    &format!("/logs/{name}?tail={tail}&follow"),
                    Vec::new(),
                    |line| {
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    },
                )
                .await?;
            if !status.is_success() {
                bail!("{status}");
            }
        }
        Command::Nosql { command } => nosql::run(&mut c, command).await?,
        Command::Status => {
            let status = c.status().await?;
            let stats = c.stats().await?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"status": status, "stats": stats})
                )?
            );
        }
        Command::Pkg {
            command: PkgCommand::Ls,
        } => {
            println!("{:<32} {:<16} {:>10}  USERS", "NAME", "VERSION", "SIZE");
            for p in c.packages().await? {
                println!(
                    "{:<32} {:<16} {:>8.1}MB  {}",
                    p.name,
                    p.version,
                    p.size_bytes as f64 / 1e6,
                    if p.users.is_empty() {
                        "-".to_string()
                    } else {
                        p.users.join(",")
                    }
                );
            }
        }
        Command::Pkg {
            command: PkgCommand::Rm { package },
        } => {
            c.remove_package(&package).await?;
            println!("{package}: removed");
        }
        Command::Pkg {
            command: PkgCommand::Gc,
        } => {
            let gc = c.packages_gc().await?;
            println!(
                "removed {} unused packages, freed {:.1} MB",
                gc.removed.len(),
                gc.bytes_freed as f64 / 1e6
            );
        }
        Command::Bench { command } => kindling_bench::run(addr, command).await?,
        Command::Up(_)
        | Command::Down
        | Command::Token
        | Command::Base { .. }
        | Command::Spawner => {
            unreachable!()
        }
    }
    Ok(())
}
