//! `airgap-snapshotter`: parses arguments, sets up logging and dispatches to
//! the command in `commands/`.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use airgap_snapshotter::config::ServeArgs;

#[derive(Parser)]
#[command(name = "airgap-snapshotter", version = airgap_snapshotter::version::VERSION, about)]
struct Cli {
    /// Log as JSON lines instead of text (logs go to stderr).
    #[arg(long, global = true, env = "AIRGAP_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: containerd proxy snapshotter (and registry mirror).
    Serve(ServeArgs),
    /// List the images the archives hold, one row per image name.
    Images(commands::images::ImagesArgs),
    /// Register the archives' images in containerd once (the daemon keeps
    /// them registered in the background), then exit.
    Import(commands::import::ImportArgs),
    /// Check every digest and diffID of the archives.
    Verify(commands::verify::VerifyArgs),
    /// Write a seekable airgap archive of the given images.
    Pack(commands::pack::PackArgs),
    /// Print the containerd config.toml fragment and hosts.toml for this
    /// daemon (--write DIR writes the hosts.toml files).
    Config(airgap_snapshotter::setup::ConfigArgs),
    /// Check that containerd is wired to the daemon and which images of a
    /// list this node has; each problem with its fix (exit 1 on a failure).
    Doctor(commands::doctor::DoctorArgs),
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `info` for the daemon,
/// `warn` for the one-shot commands, whose output is on stdout).
fn init_tracing(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let level = match args.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    init_tracing(args.log_json, level);
    let result = match args.command {
        Command::Serve(serve) => commands::serve::run(serve),
        Command::Images(a) => commands::images::run(a),
        Command::Import(a) => commands::import::run(a),
        Command::Verify(a) => commands::verify::run(a),
        Command::Pack(a) => commands::pack::run(a),
        Command::Config(a) => commands::config::run(a),
        Command::Doctor(a) => commands::doctor::run(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("airgap-snapshotter: {err:#}");
            ExitCode::FAILURE
        }
    }
}
