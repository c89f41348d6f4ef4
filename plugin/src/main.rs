//! `airgap-snapshotter`: parses arguments, sets up logging and dispatches to
//! the command in `commands/`.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use airgap_snapshotter::config::ServeArgs;

/// Exit codes, the same for every command (also in `--help`).
mod exit {
    /// Problems found: `doctor` found a failure, `verify` a bad digest,
    /// `import` an image it could not register.
    pub const PROBLEMS: u8 = 1;
    /// A usage error clap cannot see (two spellings of one flag disagree).
    pub const USAGE: u8 = 2;
    /// The command could not run: bad configuration, unreadable files,
    /// containerd or the archives unreachable, a bug.
    pub const INTERNAL: u8 = 3;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  ok
  1  problems found (doctor, verify, import)
  2  usage error (unknown command or flag, bad value)
  3  internal failure (the command could not run; the reason is on stderr)";

#[derive(Parser)]
#[command(
    name = "airgap-snapshotter",
    version = airgap_snapshotter::version::VERSION,
    about,
    after_help = EXIT_CODES
)]
struct Cli {
    /// Log level: error, warn, info, debug, trace, or a tracing filter
    /// (`airgap_snapshotter=debug,info`). Default: info for `serve`, warn
    /// for the other commands; RUST_LOG is read when this is not given.
    #[arg(long, global = true, value_name = "LEVEL", env = "AIRGAP_LOG_LEVEL")]
    log_level: Option<String>,
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "AIRGAP_LOG_FORMAT")]
    log_format: LogFormat,
    /// Same as --log-format json (kept for one release).
    #[arg(long, global = true, hide = true, env = "AIRGAP_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The one-line summaries are the README's table of commands (a test
/// compares them); more detail goes in a second paragraph (`CMD --help`).
#[derive(Subcommand)]
enum Command {
    /// Run the daemon: proxy snapshotter, registry mirror, metrics.
    Serve(ServeArgs),
    /// List the images the archives hold.
    ///
    /// One row per image name; --json for an array with each platform
    /// manifest and its layers.
    Images(commands::images::ImagesArgs),
    /// Register the archives' images in containerd once.
    ///
    /// The daemon keeps them registered in the background; this is one
    /// pass, then exit (exit 1 when an image could not be registered).
    Import(commands::import::ImportArgs),
    /// Check every digest and diffID of the archives.
    ///
    /// Exit 1 when one does not hold.
    Verify(commands::verify::VerifyArgs),
    /// Write a seekable archive of images from archives or a registry.
    Pack(commands::pack::PackArgs),
    /// Print or edit containerd's config, hosts.toml, k3s files.
    ///
    /// Prints the containerd config.toml fragment and hosts.toml for this
    /// daemon; --write writes the hosts.toml files, --merge edits
    /// containerd's config (or writes a drop-in), --registries-yaml and
    /// --containerd-template are for k3s / rke2.
    Config(airgap_snapshotter::setup::ConfigArgs),
    /// Check the node's wiring and image lists, each problem with its fix.
    ///
    /// Is containerd wired to the daemon, and which images of a list does
    /// this node have? Exit 1 on a failure.
    Doctor(commands::doctor::DoctorArgs),
}

/// Logs to stderr, filtered by `--log-level`, else `RUST_LOG`, else
/// `default_level` (`info` for the daemon, `warn` for the one-shot
/// commands, whose output is on stdout). A filter that does not parse is a
/// usage error, named.
fn init_tracing(
    level: Option<&str>,
    json: bool,
    default_level: &str,
) -> Result<(), tracing_subscriber::filter::ParseError> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::try_new(level)?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

fn main() -> ExitCode {
    // clap exits 2 on a usage error, 0 for --help and --version.
    let args = Cli::parse();
    let level = match args.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let json = args.log_json || args.log_format == LogFormat::Json;
    if let Err(err) = init_tracing(args.log_level.as_deref(), json, level) {
        eprintln!("airgap-snapshotter: --log-level: {err}");
        return ExitCode::from(2);
    }
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
            ExitCode::from(exit::INTERNAL)
        }
    }
}
