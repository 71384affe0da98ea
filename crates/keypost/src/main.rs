//! `keypost`: the binary. Configuration, wiring and the command line; no business logic.
//!
//! Every verb is `keypost [--config FILE] NOUN VERB ...`; `keypost help` lists them. The CLI
//! opens the same database as `serve` (SQLite in WAL mode allows both at once), so an operator's
//! `keys revoke` is seen by a running server on its next validation.
#![forbid(unsafe_code)]

// mimalloc rather than glibc's allocator: a token request allocates and frees many small
// buffers on two threads at once, and glibc spent a tenth of the token endpoint's CPU in
// malloc, free and their consolidation (two alternating series: +17 and +27 %
// client_credentials, +9 and +7 % refresh tokens/s; BENCHMARKS.md). The signer locks only
// pages it touches (`MCL_ONFAULT`) and is started with a small arena reserve (signer.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod config;
mod conn_limit;
mod forward;
mod http_edge;
mod published;
mod serve;
mod signer;

use std::path::PathBuf;

use clap::Parser;

/// Keypost: multi-tenant mail with its own identity service.
#[derive(Debug, Parser)]
#[command(name = "keypost", version, about, propagate_version = true)]
struct Args {
    /// Configuration file (default: ./keypost.toml if present). Every key can be overridden by
    /// a KEYPOST_* environment variable, e.g. KEYPOST_LISTEN_HTTP=127.0.0.1:9000.
    #[arg(long, global = true, env = "KEYPOST_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: cli::Command,
}

fn main() -> std::process::ExitCode {
    log_panics_without_their_messages();
    // Out of the environment first, while this is the only thread: a web process must not
    // carry the key-encryption key in its environment (it goes to the signer alone).
    if let Err(e) = cli::take_kek_from_env() {
        eprintln!("keypost: error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let args = Args::parse();
    init_logging(matches!(
        args.command,
        cli::Command::Serve | cli::Command::Signer { .. }
    ));
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keypost: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = config::Config::load(args.config.as_deref())?;
    cli::run(args.command, config)
}

/// A panic (a bug) is reported with where it happened — and its backtrace, if
/// `RUST_BACKTRACE` asks for one — but not with a message formatted at run time, which may quote
/// request data (a token, an address, a header): logs hold no secrets. A literal message
/// (`panic!("...")`, `Option::unwrap`) quotes nothing and is kept. Written to stderr directly,
/// like the default hook, so no log filter hides it.
fn log_panics_without_their_messages() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&'static str>()
            .copied()
            .unwrap_or("(withheld: formatted at run time, it may quote request data)");
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let backtrace = std::backtrace::Backtrace::capture();
        eprintln!("keypost: thread '{thread}' panicked at {location}: {message}");
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            eprintln!("{backtrace}");
        }
    }));
}

/// Logs go to stderr; `KEYPOST_LOG` takes a `tracing` target filter such as
/// `info,keypost::security=debug`. One-shot verbs log warnings only, so their output stays
/// readable and scriptable. Coloured only on a terminal (and unless `NO_COLOR` is set): a
/// log file or a journal would keep the escape codes as text.
fn init_logging(serving: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = std::env::var("KEYPOST_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let level = if serving {
                tracing::Level::INFO
            } else {
                tracing::Level::WARN
            };
            Targets::new()
                .with_default(tracing::Level::WARN)
                .with_target("keypost", level)
        });
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // The default already honours NO_COLOR; only a terminal may have colour at all.
    let layer = if std::io::stderr().is_terminal() {
        layer
    } else {
        layer.with_ansi(false)
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kids_starting_with_a_hyphen_are_values_not_options() {
        // base64url kids start with '-' one time in 64; revoking one must not need `--`.
        let args =
            Args::try_parse_from(["keypost", "keys", "revoke", "-5ItMA03Ut6i4jzNFIYqk"]).unwrap();
        assert!(
            matches!(args.command, cli::Command::Keys(cli::KeysCmd::Revoke { ref kid, .. }) if kid == "-5ItMA03Ut6i4jzNFIYqk")
        );
        let args = Args::try_parse_from([
            "keypost", "audit", "search", "--kid", "-abc", "--jti", "-def",
        ]);
        assert!(args.is_ok());
    }

    #[test]
    fn every_verb_has_help() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        fn walk(c: &clap::Command) {
            for sub in c.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{} has no help text",
                    sub.get_name()
                );
                walk(sub);
            }
        }
        walk(&Args::command());
    }
}
