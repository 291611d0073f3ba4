//! The `dynastream` binary: parse the configuration, run the engine until
//! SIGTERM or SIGINT, exit 0 after a clean shutdown, 2 on bad configuration.

use std::process::ExitCode;

use dynastream::config::{Command, Config, Invocation};
use dynastream::Engine;
use tokio_util::sync::CancellationToken;

const EXIT_CONFIG: u8 = 2;

/// mimalloc rather than the system allocator: a worker allocates and frees
/// the buffers of every AWS call and every record it reads, and glibc's
/// malloc and free were about a quarter of its CPU time in the benchmark
/// profiles (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args_os()) {
        Ok(Invocation::Run(config)) => config,
        Ok(Invocation::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("dynastream: invalid configuration: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(err) = dynastream::telemetry::init_logs(&config) {
        eprintln!("dynastream: invalid configuration: {err}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("dynastream: could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Status { json, lag }) = config.command {
        return match runtime.block_on(dynastream::status_report(&config, json, lag)) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) if err.is_configuration() => {
                eprintln!("dynastream: {err}");
                ExitCode::from(EXIT_CONFIG)
            }
            Err(err) => {
                eprintln!("dynastream: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
        let engine = Engine::connect(&config).await?;
        tracing::info!(worker = engine.worker_id(), "dynastream starting");
        let outcome = engine.run(shutdown).await;
        signals.abort();
        outcome
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is_configuration() => {
            eprintln!("dynastream: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(err) => {
            tracing::error!(error = %err, "stopping");
            eprintln!("dynastream: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on SIGTERM (what ECS and Kubernetes send) or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                let name = tokio::select! {
                    _ = terminate.recv() => "SIGTERM",
                    _ = interrupt.recv() => "SIGINT",
                };
                tracing::info!(signal = name, "shutdown requested");
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
