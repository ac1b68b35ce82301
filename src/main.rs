//! `maas` binary: parses flags, sets up logging and ONNX Runtime, binds the port, serves until
//! SIGTERM/Ctrl-C, then drains and exits 0.
use clap::Parser;
use maas::config::{Cli, Command};
use maas::logging::LogFormat;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let access_log = matches!(&cli.command, Command::Serve(a) if a.access_log);
    maas::logging::init(cli.log_format, access_log);
    match cli.command {
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                if cli.log_format == LogFormat::Json {
                    // Machines read stderr as JSON lines: the reason goes there as one.
                    tracing::error!("{e}");
                } else {
                    eprintln!("maas: error: {e}");
                }
                ExitCode::from(2)
            }
        },
        Command::Keys(maas::config::KeysCommand::Generate(args)) => match keys_generate(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("maas keys generate: error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Bench(args) => match maas::bench::run(args) {
            Ok(true) => ExitCode::SUCCESS,
            // Some requests failed: the report says which.
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("maas bench: error: {e}");
                ExitCode::from(2)
            }
        },
        // 0 published (or --dry-run passed), 1 refused by the guard, 2 error.
        Command::Optimize(args) => match maas::optimize::run(args) {
            Ok(outcome) => ExitCode::from(outcome.exit_code()),
            Err(e) => {
                eprintln!("maas optimize: error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Status(args) => match maas::status_cli::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("maas status: error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// Prints the token once (stdout, first line) and the line for the tenants file.
fn keys_generate(args: &maas::config::KeysGenerateArgs) -> Result<(), String> {
    if let Some(e) = &args.expires {
        if maas::tenancy::config::parse_time(e).is_none() {
            return Err(format!("--expires '{e}' is not an RFC 3339 time (e.g. 2027-06-30T00:00:00Z)"));
        }
    }
    let (token, id, digest) = maas::tenancy::keys::generate(args.id.as_deref())?;
    let expires = args.expires.as_ref().map(|e| format!(" expires: \"{e}\"")).unwrap_or_default();
    println!("{token}");
    println!(
        "# tenant \"{}\": add to its tenants {{ ... }} block; the token above is shown only once\nkeys {{ id: \"{id}\" sha256: \"{}\"{expires} }}",
        args.tenant,
        digest.to_hex()
    );
    Ok(())
}

fn serve(args: maas::config::ServeArgs) -> Result<(), String> {
    let cfg = args.to_config()?;
    let env = maas::runtime::env::init(args.ort_lib.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("maas-io")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener =
            tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let rest = if args.rest_api_port == 0 {
            None
        } else {
            if args.rest_api_port == args.port {
                return Err(format!("--rest-api-port must differ from --port (both are {})", args.port));
            }
            let rest_addr = format!("{}:{}", args.host, args.rest_api_port);
            let l = tokio::net::TcpListener::bind(&rest_addr)
                .await
                .map_err(|e| format!("cannot listen on {rest_addr} (--rest-api-port; 0 turns REST off): {e}"))?;
            Some(l)
        };
        let metrics = match args.metrics_port {
            0 => None,
            p if p == args.port || p == args.rest_api_port => {
                return Err(format!("--metrics-port must differ from --port and --rest-api-port (got {p})"))
            }
            p => {
                let metrics_addr = format!("{}:{p}", args.host);
                let l = tokio::net::TcpListener::bind(&metrics_addr)
                    .await
                    .map_err(|e| format!("cannot listen on {metrics_addr} (--metrics-port; 0 turns it off): {e}"))?;
                Some(l)
            }
        };
        maas::server::serve_with_metrics(cfg, env, listener, rest, metrics, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C"),
        () = term => tracing::info!("received SIGTERM"),
    }
}
