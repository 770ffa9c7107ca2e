//! `con bootstrap`: plan → apply → verify the host state the config implies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use con_provision::{ApplyOptions, Layout, PlanInput, Profile, StepStatus};

use crate::paths::Paths;

/// `con bootstrap` options.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// Install this profile (con.toml, mission.md, instruction layers,
    /// skills, sudoers templates) into <root>/etc/con as part of the plan.
    /// Without it, the config in use and the layers next to it are used.
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// Print the plan and what would change; change nothing.
    #[arg(long, conflicts_with = "check")]
    dry_run: bool,
    /// Compare the host with the plan; exit 1 if anything differs.
    #[arg(long)]
    check: bool,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// Runs `con bootstrap`.
pub fn run(args: BootstrapArgs, paths: &Paths, group_prefix: &str) -> anyhow::Result<ExitCode> {
    let mut layout = Layout::new(paths.root(), paths.user_prefix(), group_prefix)?;
    layout.config_file = paths.config_file();
    let env = environment()?;
    // Everything is read and validated before anything is touched.
    let input = match &args.profile {
        Some(dir) => {
            let profile = Profile::read(dir)?;
            let origin = dir.join("con.toml");
            let text = profile
                .text("con.toml")?
                .with_context(|| format!("{}: missing", origin.display()))?;
            PlanInput {
                config: con_config::parse(text, &origin, &env)?,
                profile,
                install_profile: true,
            }
        }
        None => {
            let config = con_config::load(&layout.config_file, &env)?;
            // The layers live next to the config: /etc/con, or a profile
            // directory named with --config.
            let dir = layout
                .config_file
                .parent()
                .map_or_else(|| layout.etc.clone(), Path::to_path_buf);
            PlanInput {
                config,
                profile: Profile::read(&dir)?,
                install_profile: false,
            }
        }
    };
    let plan = con_provision::plan(&input, &layout)?;

    if args.check {
        let drift = con_provision::check(&plan, &layout, None);
        if args.json {
            let lines: Vec<&str> = drift.iter().map(|d| d.change.as_str()).collect();
            println!("{}", serde_json::json!({ "drift": lines }));
        } else if drift.is_empty() {
            println!("check: host matches the plan");
        } else {
            for d in &drift {
                println!("{}", d.change);
            }
        }
        return Ok(if drift.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    if !args.dry_run {
        con_provision::require_root()?;
    }
    let report = con_provision::apply(
        &plan,
        &layout,
        &ApplyOptions {
            dry_run: args.dry_run,
            netns: None,
        },
    );
    let changes = report.changes();
    let failed = report.failed();
    if args.json {
        let mut value = serde_json::json!({
            "changes": changes,
            "steps": report.steps,
            "failed": failed,
        });
        if args.dry_run {
            value["plan"] =
                serde_json::json!(plan.render(&layout.root).lines().collect::<Vec<_>>());
        }
        println!("{value}");
    } else {
        if args.dry_run {
            println!("plan:");
            for line in plan.render(&layout.root).lines() {
                println!("  {line}");
            }
            println!("changes:");
        }
        for step in &report.steps {
            match &step.status {
                StepStatus::Failed(e) => println!("{} FAILED: {e}", step.change),
                StepStatus::Done | StepStatus::Note => println!("{}", step.change),
            }
        }
        if args.dry_run {
            println!("bootstrap: {changes} changes (dry run: nothing changed)");
        } else if changes == 0 && failed.is_empty() {
            println!("bootstrap: 0 changes (host matches the plan)");
        } else {
            println!("bootstrap: {changes} changes");
        }
    }
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let withheld = if report.withheld.is_empty() {
        String::new()
    } else {
        format!(
            "; units withheld for agent(s) {}",
            report.withheld.join(", ")
        )
    };
    eprintln!("con: error: {} step(s) failed{withheld}", failed.len());
    Ok(ExitCode::FAILURE)
}

/// The process environment as text, for config overrides (as `con config check`
/// reads it). Variables that are not UTF-8 cannot be con overrides; they are
/// skipped unless they claim to be one.
fn environment() -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for (key, value) in std::env::vars_os() {
        match (key.into_string(), value.into_string()) {
            (Ok(k), Ok(v)) => {
                env.insert(k, v);
            }
            (Ok(k), Err(_)) if k.starts_with("CON_") => {
                anyhow::bail!("env {k}: value is not valid UTF-8")
            }
            _ => {}
        }
    }
    Ok(env)
}
