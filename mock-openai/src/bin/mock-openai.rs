//! The `mock-openai` binary: parses flags, sets up logging to stderr, binds, prints
//! `listening on http://HOST:PORT`, and serves on `--workers` threads until SIGINT or SIGTERM.

use std::io::{IsTerminal as _, Write as _};
use std::num::NonZeroUsize;

use anyhow::Context as _;
use clap::Parser as _;
use mock_openai::server::{self, State, clock::ServerClock, config::Args};

fn main() -> std::process::ExitCode {
    match serve(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-openai: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn serve(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (addr, config, speedup) = args.load()?;
    let state = State::new(config, ServerClock::system(speedup)?)?;
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on http://{}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    let workers = NonZeroUsize::new(usize::from(args.workers)).unwrap_or(NonZeroUsize::MIN);
    server::serve_threads(listener, state, workers, shutdown_signal())?;
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
