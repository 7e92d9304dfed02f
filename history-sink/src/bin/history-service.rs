//! `history-service`: consumes history events from a Kafka consumer group into MySQL.
//!
//! ```text
//! history-service --brokers 127.0.0.1:9092 --topic image-history \
//!     --group history-service --mysql mysql://root@127.0.0.1:3306/partialconv
//! ```
//!
//! SIGTERM or Ctrl-C finishes the batch in hand, commits its offsets and exits 0.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use history_sink::service::{run, ServiceConfig, ServiceStats};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Consumes partialconv history events from Kafka into MySQL"
)]
struct Args {
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, env = "HISTORY_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic to consume.
    #[arg(long, env = "HISTORY_TOPIC", default_value = history_sink::kafka::DEFAULT_TOPIC)]
    topic: String,
    /// Consumer group id.
    #[arg(long, env = "HISTORY_GROUP", default_value = "history-service")]
    group: String,
    /// MySQL URL, e.g. `mysql://root@127.0.0.1:3306/partialconv`.
    #[arg(long = "mysql", env = "HISTORY_MYSQL")]
    mysql_url: String,
    /// Most messages per MySQL transaction.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Milliseconds to wait for more messages after the first of a batch.
    #[arg(long, default_value_t = 50)]
    batch_linger_ms: u64,
    /// Longest delay between MySQL retries, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    retry_max_ms: u64,
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut cfg = ServiceConfig::new(args.brokers, args.topic, args.group, args.mysql_url);
    cfg.batch_size = args.batch_size.max(1);
    cfg.batch_linger = Duration::from_millis(args.batch_linger_ms);
    cfg.retry_max = Duration::from_millis(args.retry_max_ms.max(1));
    let stats = Arc::new(ServiceStats::default());
    match run(cfg, stats, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("history service stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "history service failed");
            ExitCode::FAILURE
        }
    }
}
