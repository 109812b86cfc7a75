//! The `tagstorm-sim` binary: parses flags, calls the library, maps the outcome to an exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tagstorm_sim::cli::{Cli, Stdout, execute};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
