//! The `quotaflow` binary: parse arguments, set up logging, hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUOTAFLOW_LOG")
                .unwrap_or_else(|_| "quotaflow=info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or collector gets plain `key=value` fields.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = quotaflow::cli::Cli::parse();
    match quotaflow::cli::execute(cli).await {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
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
