//! `con config …`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use con_config::Config;
use con_layout::Layout;

/// `con config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a con.toml and print the resolved agents.
    ///
    /// Resolution: agent > base.<tier> (or legacy defaults.<tier>) > base >
    /// built-in defaults; CON_BASE_*, CON_BASE_<TIER>_* and CON_AGENT_<NAME>_*
    /// environment variables override the level they name.
    Check {
        /// File to check [default: the config file in use].
        path: Option<PathBuf>,
        /// Print the resolved configuration as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `con config` subcommand.
pub fn run(cmd: ConfigCommand, layout: &Layout) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Check { path, json } => {
            let path = path.unwrap_or_else(|| layout.config_file().to_path_buf());
            let env = con_config::collect_environment(std::env::vars_os())?;
            let config = con_config::load(&path, &env)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&config)?);
            } else {
                print!("{}", render(&config));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn render(config: &Config) -> String {
    let mut rows = vec![
        [
            "AGENT", "TIER", "MODE", "RUNNER", "PROVIDER", "MODEL", "SESSIONS", "SCHEDULE",
        ]
        .map(String::from),
    ];
    for a in &config.agents {
        rows.push([
            a.name.clone(),
            a.tier.to_string(),
            a.mode.to_string(),
            a.runner.to_string(),
            a.provider.map_or_else(|| "-".into(), |p| p.to_string()),
            a.model.clone().unwrap_or_else(|| "-".into()),
            a.max_sessions.to_string(),
            a.schedule.as_ref().map_or_else(
                || "-".into(),
                |s| format!("{} (OnCalendar={})", s.cron, s.on_calendar),
            ),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "{}: ok (system \"{}\", {} agents)\n\n",
        config.source.display(),
        config.system.name,
        config.agents.len()
    );
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
