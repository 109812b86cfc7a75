//! The `tagstorm-sim` binary: parses flags, calls the library, maps the outcome to an exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tagstorm_sim::cli::{Cli, CliError, execute};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    match execute(&cli, &mut stdout, &mut stderr) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        // Nothing to say: whoever would read it has gone.
        Err(CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            // Not `eprintln!`: with stderr a closed pipe it panics, and exit 3 becomes 101.
            let _ = writeln!(stderr, "{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
