//! The `quotaflow` binary: parse arguments, set up logging, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    let cli = quotaflow::cli::Cli::parse();
    // The demo's terminal is for its summary: progress lines only when something is wrong.
    let default = match cli.command {
        quotaflow::cli::Command::Demo { .. } => "quotaflow=warn",
        _ => "quotaflow=info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUOTAFLOW_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or collector gets plain `key=value` fields.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match quotaflow::cli::execute(cli).await {
        Ok(out) => {
            // A reader that closed the pipe early (`| head`) has what it wanted.
            if !out.is_empty() {
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "{out}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            // A report that fails the check is still the command's result.
            if let quotaflow::error::Error::Differs { report } = &e {
                print!("{report}");
            }
            eprintln!("error: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
