use clap::Parser;
use std::time::Duration;

use server_example::auth::{check_exposure, tokens};
use server_example::backend::Backend;
use server_example::config::{Command, TokenCommand};
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
    let done = match &cfg.command {
        Some(Command::Token(cmd)) => token(cmd),
        None => run(cfg).await,
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server-example: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `server-example token add|revoke|list`.
fn token(cmd: &TokenCommand) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        TokenCommand::Add {
            user,
            file,
            expires,
            service,
        } => {
            let user = server_example::identity::check_user_id(Some(user.clone()))?
                .ok_or("the user id is empty")?;
            let token = tokens::add(file, &user, *expires, *service)?;
            eprintln!(
                "token for `{user}` (shown once; {} keeps its hash):",
                file.display()
            );
            println!("{token}");
        }
        TokenCommand::Revoke { user, file } => {
            let n = tokens::revoke(file, user)?;
            if n == 0 {
                return Err(format!("`{user}` has no token in {}", file.display()).into());
            }
            println!("revoked {n} token(s) of `{user}`");
        }
        TokenCommand::List { file } => {
            for e in tokens::read(file)? {
                let expires = e.expires.map_or("never".to_owned(), |t| t.to_rfc3339());
                let kind = if e.service { " (service)" } else { "" };
                println!(
                    "{}{kind}\tcreated {}\texpires {expires}",
                    e.user,
                    e.created.to_rfc3339()
                );
            }
        }
    }
    Ok(())
}

async fn run(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(&cfg.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.bind))?;
    let addr = listener.local_addr()?;
    // Before anything is opened: a refused start leaves nothing behind.
    check_exposure(&cfg.auth, addr, cfg.insecure_public)?;
    let state = AppState::from_config(&cfg).await?;
    let history = state.history.clone();
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
    // The peer address, for --trusted-proxy and the rate limit of callers without sign-in.
    let service = app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service)
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
