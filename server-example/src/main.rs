use clap::Parser;
use std::time::Duration;

use server_example::backend::Backend;
use server_example::{app, AppState, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Logs on stderr: stdout carries only the URL line, for scripts to read.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn")),
        )
        .init();
    let cfg = Config::parse();
    match run(cfg).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server-example: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    let state = AppState::from_config(&cfg).await?;
    let history = state.history.clone();
    let listener = tokio::net::TcpListener::bind(&cfg.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.bind))?;
    let addr = listener.local_addr()?;
    // Serve /healthz while the model loads, but exit rather than linger never ready.
    if let Backend::Local(_) = &*state.backend {
        let backend = state.backend.clone();
        tokio::spawn(async move {
            if let Backend::Local(pool) = &*backend {
                loop {
                    match pool.readiness() {
                        Ok(_) => break,
                        Err(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                        Err(Some(e)) => {
                            eprintln!("server-example: {e}");
                            std::process::exit(1);
                        }
                    }
                }
            }
        });
    }
    // Printed on stdout, so scripts (and `make run`) can pick the URL up.
    println!("server-example listening on http://{addr}/");
    let finetune = state.finetune.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Before the connections drain: this ends the job event streams, and a running
            // job saves a checkpoint to resume from at the next start.
            if let Some(jobs) = finetune {
                jobs.shutdown().await;
            }
        })
        .await?;
    // Spooled events are on disk and the next start delivers them; wait a little so that a
    // healthy destination has them now, but never hold a shutdown for one that is down.
    if let Some(h) = history {
        match tokio::time::timeout(Duration::from_secs(5), h.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("flushing history on shutdown: {e}"),
            Err(_) => {
                let pending: u64 = h.spool_stats().iter().map(|s| s.pending_events).sum();
                tracing::warn!(pending, "history events stay spooled until the next start");
            }
        }
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM from a container runtime or service manager.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
