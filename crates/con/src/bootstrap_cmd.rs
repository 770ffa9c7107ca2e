//! `con bootstrap`: plan → apply → verify the host state the config implies.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use con_layout::Layout;
use con_protocol::{Client, ClientEvent};
use con_provision::{ApplyOptions, PlanInput, Profile, Report};

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
pub fn run(args: BootstrapArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let env = con_config::collect_environment(std::env::vars_os())?;
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
        None => PlanInput {
            config: con_config::load(layout.config_file(), &env)?,
            profile: Profile::read(&layout.profile_dir())?,
            install_profile: false,
        },
    };
    let profile_dir = args.profile.clone().unwrap_or_else(|| layout.profile_dir());
    let drop_ins = vet_drop_ins(&input.profile, &profile_dir)?;
    let mut plan = con_provision::plan(&input, layout)?;
    let notes = plan.withhold_quarantined_inbox_writers(layout, &quarantined(layout)?);

    for note in &drop_ins {
        eprintln!("con: note: {note}");
    }

    if args.check {
        let drift = con_provision::check(&plan, layout, None);
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
    let mut report = con_provision::apply(
        &plan,
        layout,
        &ApplyOptions {
            dry_run: args.dry_run,
            netns: None,
        },
    );
    report.steps.extend(notes);
    if args.dry_run {
        let changes = report.changes();
        if args.json {
            let value = serde_json::json!({
                "changes": changes,
                "steps": report.steps,
                "failed": report.failed(),
                "plan": plan.render(layout.root()).lines().collect::<Vec<_>>(),
            });
            println!("{value}");
        } else {
            println!("plan:");
            for line in plan.render(layout.root()).lines() {
                println!("  {line}");
            }
            println!("changes:");
            print_steps(&report);
            println!("bootstrap: {changes} changes (dry run: nothing changed)");
        }
        return Ok(exit_code(&report));
    }
    finish("bootstrap", &report, args.json, layout, Vec::new())
}

/// The agents quarantined now, as the log tells it: asked of the daemon
/// when it runs, otherwise read from the event log directly (opened for
/// inspection: nothing is written); none on a host with no log yet. An
/// apply must not give other agents back the write access to a
/// quarantined inbox that only a resume restores, so when neither the
/// daemon nor the log can say, nothing is applied.
pub(crate) fn quarantined(layout: &Layout) -> anyhow::Result<Vec<String>> {
    use con_event::payloads::AgentCondition;
    use con_projection::Projection;

    if let Ok(mut client) = Client::connect_with_timeout(&layout.socket(), crate::DAEMON_TIMEOUT) {
        let view = client
            .status()
            .context("asking the daemon which agents are quarantined")?;
        return Ok(view
            .agents
            .into_iter()
            .filter(|a| a.condition == AgentCondition::Quarantined)
            .map(|a| a.name)
            .collect());
    }
    let db = layout.event_log();
    if !db.exists() {
        return Ok(Vec::new());
    }
    let why = || {
        format!(
            "reading {} to know which agents are quarantined (the daemon is not running)",
            db.display()
        )
    };
    let store = con_store::Store::open_for_inspection(&db).with_context(why)?;
    let mut fleet = con_projection::FleetStatus::default();
    for event in store.events_from(1) {
        fleet.apply(&event.with_context(why)?);
    }
    Ok(fleet
        .agents
        .into_iter()
        .filter(|(_, a)| a.condition == AgentCondition::Quarantined)
        .map(|(name, _)| name)
        .collect())
}

/// Prints each step on its own line, failures with their reason.
fn print_steps(report: &Report) {
    for step in &report.steps {
        println!("{step}");
    }
}

/// Success, or failure (with one line on stderr) if a step failed.
fn exit_code(report: &Report) -> ExitCode {
    let failed = report.failed();
    if failed.is_empty() {
        return ExitCode::SUCCESS;
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
    ExitCode::FAILURE
}

/// After an apply (bootstrap, commission, decommission): prints the report,
/// records `before` and then one `provision.applied` event through the
/// daemon if it is up, and gives the exit code. `command` is what the event
/// names (`commission scribe`).
pub(crate) fn finish(
    command: &str,
    report: &Report,
    json: bool,
    layout: &Layout,
    before: Vec<con_protocol::SetCondition>,
) -> anyhow::Result<ExitCode> {
    let changes = report.changes();
    let recorded = record(command, report, layout, before)?;
    if json {
        let value = serde_json::json!({
            "command": command,
            "changes": changes,
            "steps": report.steps,
            "failed": report.failed(),
            "withheld": report.withheld,
            "recorded": recorded,
        });
        println!("{value}");
    } else {
        print_steps(report);
        if changes == 0 && report.failed().is_empty() {
            println!("{command}: 0 changes (host matches the plan)");
        } else {
            println!("{command}: {changes} changes");
        }
    }
    Ok(exit_code(report))
}

/// Has the daemon record the conditions in `before`, then appends a `provision.applied` event for `report`. With no
/// daemon listening (bootstrap on a fresh host runs before it exists) that
/// is said on stderr and is not an error; a daemon that refuses is.
fn record(
    command: &str,
    report: &Report,
    layout: &Layout,
    before: Vec<con_protocol::SetCondition>,
) -> anyhow::Result<bool> {
    let socket = layout.socket();
    let Ok(mut client) = Client::connect_with_timeout(&socket, crate::DAEMON_TIMEOUT) else {
        eprintln!(
            "con: the daemon is not running ({}): {command} not recorded in the event log",
            socket.display()
        );
        return Ok(false);
    };
    let (applied, steps) = report.applied_event(command);
    for order in before {
        client
            .set_condition(order)
            .with_context(|| format!("recording agent.state for {command}"))?;
    }
    client
        .append(ClientEvent::new(&applied.into(), vec![steps])?)
        .with_context(|| format!("recording provision.applied for {command}"))?;
    Ok(true)
}

/// Vets the profile's ready-made `sudoers.d/` drop-ins (the original
/// agent-runner's layout) with visudo and says what becomes of them: they
/// are not installed. A drop-in visudo rejects makes the profile invalid.
fn vet_drop_ins(profile: &Profile, dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    for (rel, _) in profile.sudoers_drop_ins() {
        let path = dir.join(rel);
        con_provision::sudoers::vet(&path).map_err(anyhow::Error::msg)?;
        notes.push(format!(
            "{}: valid sudoers (visudo -c), accepted and not installed: con grants sudo only \
             from sudoers/<role> templates, one role's user per line, which `con policy explain` \
             states; write the rights the role needs there",
            path.display()
        ));
    }
    Ok(notes)
}
