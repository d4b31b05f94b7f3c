//! The `tidegate` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tidegate::config::{Config, LogFormat};
use tidegate::runtime::{ProxyProcess, Signals};

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
    /// Run the proxy with a config file (reloads on SIGHUP and on file change; drains on SIGTERM).
    Proxy {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and exit: 0 when valid, 1 with the file, line and field when not.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Two app versions on loopback, the proxy in front, steady load and a live view.
    Demo {
        /// Stop after this long (e.g. 30s); runs until Ctrl-C without it.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tidegate::config::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} listeners, {} routes)",
                    config.display(),
                    c.listeners.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Proxy { config } => {
            let format = match (cli.log_format, Config::load(&config)) {
                (Some(f), _) => f,
                (None, Ok(c)) if c.log.format == LogFormat::Json => LogFormatArg::Json,
                _ => LogFormatArg::Human,
            };
            init_logging(format);
            run_async(async move {
                let signals = Signals::install()?;
                let process = ProxyProcess::start(&config).await?;
                for (name, addr) in &process.listeners {
                    tracing::info!(listener = %name, %addr, "listening");
                }
                tracing::info!(addr = %process.admin_addr, "admin listening (/metrics, /routes, /healthz)");
                process.run_until_signal(signals).await;
                Ok(())
            })
        }
        Command::Demo { duration } => {
            init_logging(cli.log_format.unwrap_or(LogFormatArg::Human));
            run_async(async move { tidegate::demo::run(duration).await })
        }
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

fn init_logging(format: LogFormatArg) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormatArg::Json => builder.json().init(),
        LogFormatArg::Human => builder.init(),
    }
}
