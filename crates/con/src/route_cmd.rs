//! `con route-inbox`: have the daemon route the outer inbox now.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;
use con_event::escape_control;
use con_layout::Layout;
use con_protocol::{Client, RouteView};

/// Arguments of `con route-inbox`.
#[derive(Debug, Args)]
pub struct RouteArgs {
    /// Print what was routed as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `con route-inbox`: one line per task moved, then the tasks that
/// could not be (exit 1) or are not recorded yet.
pub fn run(args: RouteArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let view =
        Client::connect_with_timeout(&layout.socket(), crate::DAEMON_TIMEOUT)?.route_inbox()?;
    let text = if args.json {
        serde_json::to_string(&view)? + "\n"
    } else {
        render(&view)
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if view.router.is_none() {
        eprintln!(
            "con route-inbox: no concierge is configured, so the outer inbox {} is not routed",
            layout.outer_inbox().display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(if view.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The text form: what moved where, what did not, what waits.
fn render(view: &RouteView) -> String {
    let mut out = String::new();
    for t in &view.routed {
        out.push_str(&format!(
            "routed {} to {} ({}, seq {})\n",
            escape_control(&t.name),
            t.to,
            escape_control(&t.path),
            t.seq
        ));
    }
    for f in &view.failed {
        out.push_str(&format!("not routed: {}\n", escape_control(f)));
    }
    for w in &view.waiting {
        out.push_str(&format!(
            "waiting: {} (its arrival is not recorded yet)\n",
            escape_control(w)
        ));
    }
    if view.router.is_some() && view.routed.is_empty() && view.failed.is_empty() {
        out.push_str("nothing to route\n");
    }
    out
}
