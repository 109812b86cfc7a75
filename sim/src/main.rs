//! The `tagstorm-sim` binary: parses flags, calls the library, maps the outcome to an exit code.

use std::io::{ErrorKind, Write};
use std::process::ExitCode;

use clap::Parser;
use tagstorm_sim::cli::{Cli, Stdout, execute, stdout_error};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    let mut stdout = Stdout::new(std::io::stdout().lock());
    let mut stderr = std::io::stderr();
    match execute(&cli, &mut stdout, &mut stderr) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            // Not `eprintln!`: with stderr a closed pipe it panics, and exit 3 becomes 101.
            let _ = writeln!(stderr, "{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints clap's help, version or usage error and picks the exit code. Not `Error::exit`: it
/// drops a failed write, so `--help > /dev/full` exited 0, where any other output that cannot
/// be written exits 3. A reader that has gone (`--help | head -1`) is still no failure.
fn clap_exit(e: &clap::Error) -> ExitCode {
    let written = e.print().and_then(|()| std::io::stdout().flush());
    match written {
        Err(w) if !e.use_stderr() && w.kind() != ErrorKind::BrokenPipe => {
            let failed = stdout_error(w);
            let _ = writeln!(std::io::stderr(), "{failed}");
            ExitCode::from(failed.exit_code())
        }
        _ => ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)),
    }
}
