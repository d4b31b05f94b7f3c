//! The `tidegate` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tidegate::cli::{self, AdminClient, CliError, exit};
use tidegate::config::{Config, ConfigError, LogFormat};
use tidegate::kube::proxy::ClusterProxy;
use tidegate::rollout::RolloutStatus;
use tidegate::runtime::{ProxyProcess, Signals};

mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::PooledAllocator = allocator::PooledAllocator;

#[derive(Parser)]
#[command(
    name = "tidegate",
    version,
    about = "Progressive-delivery proxy: exact weighted canary traffic split"
)]
struct Cli {
    /// Log format; overrides `log.format` in the config.
    #[arg(long, global = true, env = "TIDEGATE_LOG_FORMAT")]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run proxy, rollout engine and admin API from a config file (local mode). Reloads on
    /// SIGHUP and on file change; drains on SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The same as `run`; with `--kube`, a proxy whose routes and weights follow the
    /// cluster's Rollouts and EndpointSlices (the file then holds listeners, admin, timeouts).
    Proxy {
        #[arg(long, short)]
        config: PathBuf,
        /// Routes from the cluster (kubeconfig, or the pod's service account).
        #[arg(long)]
        kube: bool,
        /// With `--kube`: only this namespace's Rollouts; all namespaces by default.
        #[arg(long, env = "TIDEGATE_WATCH_NAMESPACE", requires = "kube")]
        namespace: Option<String>,
    },
    /// End the current step or pause and go on (`--full`: straight to 100 %).
    Promote {
        rollout: String,
        #[arg(long)]
        full: bool,
        #[arg(long, short, value_enum, default_value = "human")]
        output: Output,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Send all traffic back to stable; the canary stays for inspection.
    Abort(RolloutArgs),
    /// Hold the rollout where it is.
    Pause(RolloutArgs),
    /// Go on after `pause`, or measure again after an inconclusive analysis.
    Resume(RolloutArgs),
    /// Start an aborted rollout again from step 1.
    Retry(RolloutArgs),
    /// Start the current rollout again from step 1.
    Restart(RolloutArgs),
    /// Show rollouts: all of them as a table, or one in detail.
    Status {
        rollout: Option<String>,
        /// Refresh every second until Ctrl-C.
        #[arg(long, short)]
        watch: bool,
        #[arg(long, short, value_enum, default_value = "human")]
        output: Output,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Check a config file and exit: 0 when valid, 1 with the file, line and field when not.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Roll a demo app's v2 out over v1 on loopback under steady load, live, then sum up.
    Demo {
        /// A canary that answers 30 % of requests with 500: watch the automatic rollback.
        #[arg(long)]
        bad_canary: bool,
        /// Keep serving after the rollout ends, until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
    },
    /// Print the `Rollout` CustomResourceDefinition (YAML) for `kubectl apply -f -`.
    Crdgen,
    /// Run the rollout controller on a cluster (kubeconfig, or the pod's service account):
    /// Rollouts and annotated Deployments, leader-elected so that replicas can stand by.
    Controller {
        /// Where `/healthz`, `/readyz` and `/metrics` are served.
        #[arg(
            long,
            env = "TIDEGATE_CONTROLLER_LISTEN",
            default_value = "0.0.0.0:9902"
        )]
        listen: std::net::SocketAddr,
        /// Only this namespace's Rollouts and Deployments; all namespaces by default.
        #[arg(long, env = "TIDEGATE_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Namespace of the election's Lease (the controller's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        #[arg(long, default_value = "tidegate-controller")]
        lease_name: String,
        /// This replica's name in the election; the hostname by default.
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Label selector of the EndpointSlices (port `admin`) that list the proxies to scrape.
        #[arg(long, env = "TIDEGATE_PROXY_SELECTOR", default_value = tidegate::kube::fleet::DEFAULT_PROXY_SELECTOR)]
        proxy_selector: String,
        /// Prometheus server (http(s) URL) of `prometheus` metrics that name no `address`.
        #[arg(long, env = "TIDEGATE_PROMETHEUS", value_parser = prometheus_url)]
        prometheus: Option<String>,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The admin API of the running tidegate.
    #[arg(long, env = "TIDEGATE_ADMIN", default_value = "http://127.0.0.1:9901")]
    admin: String,
    /// File with the admin bearer token (else `TIDEGATE_ADMIN_TOKEN`).
    #[arg(long, env = "TIDEGATE_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Ask the cluster's controller (kubeconfig, or the pod's service account) instead of a
    /// local tidegate: the command is recorded on the Rollout for whichever controller leads.
    #[arg(long)]
    kube: bool,
    /// The Rollout's namespace, with `--kube`; by default the kubeconfig context's, as
    /// kubectl does (or the pod's own, in a cluster).
    #[arg(long, short = 'n', env = "TIDEGATE_NAMESPACE")]
    namespace: Option<String>,
}

/// Where rollouts are read and commanded: a local tidegate's admin API, or the cluster.
enum Rollouts {
    Admin(AdminClient),
    Kube(kube::Client, String),
}

impl Rollouts {
    async fn connect(args: &AdminArgs) -> Result<Rollouts, CliError> {
        if args.kube {
            let client = tidegate::kube::commands::client().await?;
            let namespace = args
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string());
            return Ok(Rollouts::Kube(client, namespace));
        }
        Ok(Rollouts::Admin(AdminClient::new(
            &args.admin,
            args.token_file.as_ref(),
        )?))
    }

    async fn command(
        &self,
        rollout: &str,
        verb: &str,
        full: bool,
    ) -> Result<RolloutStatus, CliError> {
        match self {
            Rollouts::Admin(a) => a.command(rollout, verb, full).await,
            Rollouts::Kube(c, ns) => {
                let within = tidegate::kube::commands::ANSWER_WITHIN;
                tidegate::kube::commands::ask(c.clone(), ns, rollout, verb, full, within).await
            }
        }
    }

    async fn status(&self, rollout: &str) -> Result<RolloutStatus, CliError> {
        match self {
            Rollouts::Admin(a) => a.status(rollout).await,
            Rollouts::Kube(c, ns) => tidegate::kube::commands::status(c.clone(), ns, rollout).await,
        }
    }

    async fn list(&self) -> Result<Vec<RolloutStatus>, CliError> {
        match self {
            Rollouts::Admin(a) => a.list().await,
            Rollouts::Kube(c, ns) => tidegate::kube::commands::list(c.clone(), ns).await,
        }
    }
}

#[derive(clap::Args)]
struct RolloutArgs {
    rollout: String,
    #[arg(long, short, value_enum, default_value = "human")]
    output: Output,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen => {
            print!("{}", tidegate::kube::crd::definition_yaml());
            ExitCode::SUCCESS
        }
        Command::Validate { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} listeners, {} routes)",
                    config.display(),
                    c.proxy.listeners.len(),
                    c.proxy.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Proxy {
            config,
            kube: true,
            namespace,
        } => {
            let format = log_format(cli.log_format, Config::load_for_cluster(&config));
            init_logging(format, "info");
            run_async(async move {
                let signals = Signals::install()?;
                let client = tidegate::kube::commands::client()
                    .await
                    .map_err(|e| e.message)?;
                let process = ClusterProxy::start(&config, client, namespace).await?;
                log_listening(&process.listeners, process.admin_addr);
                process.run_until_signal(signals).await;
                Ok(())
            })
        }
        Command::Run { config } | Command::Proxy { config, .. } => {
            let format = log_format(cli.log_format, Config::load(&config));
            init_logging(format, "info");
            run_async(async move {
                let signals = Signals::install()?;
                let process = ProxyProcess::start(&config).await?;
                log_listening(&process.listeners, process.admin_addr);
                process.run_until_signal(signals).await;
                Ok(())
            })
        }
        Command::Controller {
            listen,
            namespace,
            lease_namespace,
            lease_name,
            identity,
            proxy_selector,
            prometheus,
        } => {
            init_logging(cli.log_format.unwrap_or(LogFormatArg::Human), "info");
            let identity = identity
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("tidegate-{}", std::process::id()));
            run_async(async move {
                let client = tidegate::kube::commands::client()
                    .await
                    .map_err(|e| e.message)?;
                let options = tidegate::kube::process::ControllerOptions {
                    listen,
                    namespace,
                    lease_namespace,
                    lease_name,
                    identity,
                    proxy_selector,
                    prometheus,
                };
                tidegate::kube::process::run(client, options).await?;
                Ok(())
            })
        }
        Command::Promote {
            rollout,
            full,
            output,
            admin,
        } => rollout_command(&admin, &rollout, "promote", full, output),
        Command::Abort(a) => rollout_command(&a.admin, &a.rollout, "abort", false, a.output),
        Command::Pause(a) => rollout_command(&a.admin, &a.rollout, "pause", false, a.output),
        Command::Resume(a) => rollout_command(&a.admin, &a.rollout, "resume", false, a.output),
        Command::Retry(a) => rollout_command(&a.admin, &a.rollout, "retry", false, a.output),
        Command::Restart(a) => rollout_command(&a.admin, &a.rollout, "restart", false, a.output),
        Command::Status {
            rollout,
            watch,
            output,
            admin,
        } => status_command(&admin, rollout.as_deref(), watch, output),
        Command::Demo {
            bad_canary,
            keep_running,
        } => {
            // The demo prints its own story; the log only says what goes wrong.
            init_logging(cli.log_format.unwrap_or(LogFormatArg::Human), "warn");
            run_async(async move {
                tidegate::demo::run(tidegate::demo::DemoOptions {
                    bad_canary,
                    keep_running,
                })
                .await
            })
        }
    }
}

/// `--prometheus`: an http(s) URL, as a metric's own `address` must be.
fn prometheus_url(text: &str) -> Result<String, String> {
    tidegate::analysis::http_url(text).map(|()| text.to_string())
}

fn log_listening(listeners: &[(String, std::net::SocketAddr)], admin: std::net::SocketAddr) {
    for (name, addr) in listeners {
        tracing::info!(listener = %name, %addr, "listening");
    }
    tracing::info!(addr = %admin, "admin listening (/metrics, /routes, /healthz)");
}

/// The flag's log format, else the config's, else human.
fn log_format(flag: Option<LogFormatArg>, config: Result<Config, ConfigError>) -> LogFormatArg {
    match (flag, config) {
        (Some(f), _) => f,
        (None, Ok(c)) if c.log.format == LogFormat::Json => LogFormatArg::Json,
        _ => LogFormatArg::Human,
    }
}

fn client_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
}

fn fail(e: CliError) -> ExitCode {
    eprintln!("error: {}", e.message);
    ExitCode::from(e.code)
}

fn rollout_command(
    admin: &AdminArgs,
    rollout: &str,
    verb: &str,
    full: bool,
    output: Output,
) -> ExitCode {
    let Some(rt) = client_runtime() else {
        return ExitCode::from(exit::UNREACHABLE);
    };
    let result = rt.block_on(async {
        let rollouts = Rollouts::connect(admin).await?;
        rollouts.command(rollout, verb, full).await
    });
    match result {
        Ok(status) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                ),
                Output::Human => print!("{}", cli::describe(&status, 3)),
            }
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(e),
    }
}

fn status_command(
    admin: &AdminArgs,
    rollout: Option<&str>,
    watch: bool,
    output: Output,
) -> ExitCode {
    let Some(rt) = client_runtime() else {
        return ExitCode::from(exit::UNREACHABLE);
    };
    let result: Result<(), CliError> = rt.block_on(async {
        let client = Rollouts::connect(admin).await?;
        let mut last = String::new();
        loop {
            let fetched = match (rollout, output) {
                (Some(r), Output::Human) => client.status(r).await.map(|s| cli::describe(&s, 10)),
                (Some(r), Output::Json) => client
                    .status(r)
                    .await
                    .map(|s| serde_json::to_string(&s).unwrap_or_default() + "\n"),
                (None, Output::Human) => client.list().await.map(|l| cli::table(&l)),
                (None, Output::Json) => client
                    .list()
                    .await
                    .map(|l| serde_json::to_string(&l).unwrap_or_default() + "\n"),
            };
            let text = match fetched {
                Ok(text) => text,
                // While watching, a restarting tidegate is a moment to wait out, not the end.
                Err(e) if watch && e.code == exit::UNREACHABLE && !last.is_empty() => {
                    eprintln!("admin API unreachable, retrying: {}", e.message);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            };
            if !watch {
                print!("{text}");
                return Ok(());
            }
            if text != last {
                match output {
                    // Redraw in place, like `watch`.
                    Output::Human => print!("\x1b[2J\x1b[H{text}"),
                    // One JSON document per change, for scripts.
                    Output::Json => print!("{text}"),
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
                last = text;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    });
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => fail(e),
    }
}

fn run_async<F>(fut: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr at `RUST_LOG`'s level, or `default_level`.
fn init_logging(format: LogFormatArg, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour codes only for a person at a terminal: a log file or pipe gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormatArg::Json => builder.json().init(),
        LogFormatArg::Human => builder.init(),
    }
}
