//! `dynastream-fault-proxy`: a fault-injecting HTTP/1.1 reverse proxy for
//! testing dynastream under failures. It sits on loopback between dynastream
//! and DynamoDB Local (or the scripted streams endpoint), forwards every
//! request unchanged, and injects the faults that rules set through its
//! control endpoint ask for.
//!
//! ```text
//! dynastream-fault-proxy --upstream http://127.0.0.1:8000 [--listen 127.0.0.1:0] [--control 127.0.0.1:0]
//! ```
//!
//! At start it prints one line on stdout,
//! `{"proxy":"http://127.0.0.1:P","control":"http://127.0.0.1:C"}`, then
//! serves until SIGTERM or SIGINT (exit 0). A request's API is its
//! `X-Amz-Target` header (`DynamoDB_20120810.UpdateItem`,
//! `DynamoDBStreams_20120810.GetRecords`, ...); `rules.rs` says how rules
//! match and fire, `control.rs` lists the control API, `proxy.rs` forwards.

mod control;
mod proxy;
mod rules;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// A fault-injecting HTTP/1.1 proxy in front of DynamoDB (Local).
#[derive(Debug, Parser)]
#[command(name = "dynastream-fault-proxy")]
struct Args {
    /// Where the proxy listens (port 0: a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where requests go, `http://host:port`.
    #[arg(long)]
    upstream: String,
    /// Where the control endpoint listens (port 0: a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let upstream = match proxy::Upstream::parse(&args.upstream) {
        Ok(upstream) => upstream,
        Err(e) => {
            eprintln!("dynastream-fault-proxy: invalid --upstream: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args, upstream).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dynastream-fault-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, upstream: proxy::Upstream) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let control_listener = TcpListener::bind(args.control).await?;
    // Written by hand to keep the documented key order.
    let line = format!(
        r#"{{"proxy":"http://{}","control":"http://{}"}}"#,
        listener.local_addr()?,
        control_listener.local_addr()?,
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    drop(stdout);

    let state = Arc::new(rules::State::default());
    let proxy = Arc::new(proxy::Proxy::new(Arc::clone(&state), upstream));
    tokio::spawn(proxy::serve(listener, proxy));
    tokio::spawn(control::serve(control_listener, state));

    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
