//! The `mock-openai` binary: parses flags, sets up logging to stderr, binds, prints
//! `listening on http://HOST:PORT`, and serves on `--workers` threads until SIGINT or SIGTERM
//! (a second one stops at once, without waiting for in-flight requests).

use std::io::{IsTerminal as _, Write as _};
use std::num::NonZeroUsize;

use anyhow::Context as _;
use clap::Parser as _;
use mock_openai::server::{self, State, clock::ServerClock, config::Args};
use tracing::info;

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
    // The handlers are in place before the port is announced: a SIGTERM sent as soon as the
    // line is read is a graceful stop, not the default action's kill.
    let rt = server::thread_runtime()?;
    let mut signals = {
        let _entered = rt.enter();
        Signals::new().context("cannot listen for signals")?
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on http://{}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    let workers = NonZeroUsize::new(usize::from(args.workers)).unwrap_or(NonZeroUsize::MIN);
    let shutdown = async move {
        signals.next().await;
        info!("stopping: a second SIGINT or SIGTERM stops without waiting for in-flight requests");
        tokio::spawn(async move {
            let code = signals.next().await;
            eprintln!(
                "mock-openai: second signal, stopping without waiting for in-flight requests"
            );
            std::process::exit(i32::from(code));
        });
    };
    server::serve_threads_on(rt, listener, state, workers, shutdown)?;
    Ok(())
}

/// SIGINT and SIGTERM, caught from the moment this is built (in a runtime's context).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Waits for the next SIGINT or SIGTERM; returns the status a stop by it reports (128 +
    /// the signal's number, as a shell reports a process the signal killed).
    async fn next(&mut self) -> u8 {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => 130,
                _ = self.terminate.recv() => 143,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            130
        }
    }
}
