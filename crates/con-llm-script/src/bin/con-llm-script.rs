//! `con-llm-script --script FILE --listen 127.0.0.1:PORT`: serve a scripted
//! LLM on loopback for end-to-end suites and benchmarks. Prints the base URL
//! on stdout, then serves until killed. The script format is documented in
//! the `con_llm_script` crate docs.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use con_llm_script::{ScriptedServer, Step};

/// Serve a scripted LLM (OpenAI-compatible and Anthropic wire formats) over HTTP.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// JSON file holding an array of steps.
    #[arg(long)]
    script: PathBuf,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    // Named, not `_`: the server must live as long as the process.
    let _server = match start(&Args::parse()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("con-llm-script: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // The server runs on its own thread; this one only keeps the process
    // (and so the server) alive until a signal ends it.
    loop {
        std::thread::park();
    }
}

fn start(args: &Args) -> anyhow::Result<ScriptedServer> {
    let text = std::fs::read_to_string(&args.script)
        .with_context(|| format!("cannot read script {}", args.script.display()))?;
    let steps: Vec<Step> = serde_json::from_str(&text).with_context(|| {
        format!(
            "script {} is not a JSON array of steps",
            args.script.display()
        )
    })?;
    let server = ScriptedServer::try_start(args.listen, steps)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", server.base_url())?;
    out.flush()?;
    Ok(server)
}
