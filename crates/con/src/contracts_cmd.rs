//! `con contracts`: list the contracts with their state as the log tells
//! it, and run them now through the daemon (which records each result).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use con_contracts::{CheckStates, is_failure};
use con_event::payloads::{CheckStatus, ContractResult, Kind};
use con_event::{Event, Payload, escape_control};
use con_layout::Layout;
use con_protocol::{AddContract, CheckRun, Client, Query, RunContracts};
use serde::Serialize;

/// `con contracts …`.
#[derive(Debug, Subcommand)]
pub enum ContractsCommand {
    /// List contracts and their checks, each with its state from the log
    /// (passing, failing since when, last result).
    List(ListArgs),
    /// Run contracts now through the daemon (all of them, or these ids);
    /// one line per check and a summary; exit 1 if any check failed.
    Check(CheckArgs),
    /// Hand a contract file to the daemon, which checks it, records it and
    /// stores it root-owned as <contracts dir>/<id>.yaml; its checks run as
    /// you (operators, and agents of the sysadmin role).
    Add(AddArgs),
}

/// Arguments of `con contracts add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The contract file (YAML).
    file: std::path::PathBuf,
    /// Print what was stored as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `con contracts list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `con contracts check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Contract ids (default: every contract and the built-in checks).
    ids: Vec<String>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `con contracts …`.
pub fn run(command: ContractsCommand, layout: &Layout) -> anyhow::Result<ExitCode> {
    match command {
        ContractsCommand::List(args) => list(&args, layout),
        ContractsCommand::Check(args) => {
            let runs = Client::connect(&layout.socket())?.run_contracts(RunContracts {
                ids: args.ids,
                detective_only: false,
            })?;
            print_runs(&runs, args.json)
        }
        ContractsCommand::Add(args) => add(&args, layout),
    }
}

/// `con contracts add FILE`: the file is read here, as the caller, and
/// judged and stored by the daemon.
fn add(args: &AddArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let content =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let view = Client::connect(&layout.socket())?.add_contract(AddContract {
        file: args.file.display().to_string(),
        content,
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        println!(
            "{} contract {} as {} (its checks run as uid {}; recorded at seq {})",
            if view.replaced { "replaced" } else { "added" },
            escape_control(&view.contract),
            escape_control(&view.path),
            view.author_uid,
            view.seq
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints results, one line per check and a summary (or JSON); the exit
/// code says whether any failed.
pub fn print_runs(runs: &[CheckRun], json: bool) -> anyhow::Result<ExitCode> {
    let failed = runs.iter().filter(|r| is_failure(r.status)).count();
    if json {
        println!("{}", serde_json::to_string_pretty(runs)?);
    } else {
        for r in runs {
            println!(
                "{:<14} {:<28} {:<8} {:>6}ms {}",
                escape_control(&r.contract),
                escape_control(&r.check),
                r.status.as_str(),
                r.duration_ms,
                escape_control(&r.detail)
            );
        }
        let count = |s: CheckStatus| runs.iter().filter(|r| r.status == s).count();
        println!(
            "{} checks: {} passed, {} failed, {} errors, {} timed out, {} skipped",
            runs.len(),
            count(CheckStatus::Pass),
            count(CheckStatus::Fail),
            count(CheckStatus::Error),
            count(CheckStatus::Timeout),
            count(CheckStatus::Skipped),
        );
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One check in `con contracts list`.
#[derive(Debug, Serialize)]
struct Row {
    contract: String,
    check: String,
    #[serde(rename = "type")]
    kind: String,
    scope_agent: Option<String>,
    frequency_secs: Option<u64>,
    /// `passing`, `failing`, `skipped` or `unknown` (never evaluated).
    state: &'static str,
    /// When the current failure began (RFC 3339) and its seq.
    failing_since: Option<String>,
    failing_since_seq: Option<u64>,
    last_status: Option<CheckStatus>,
    last_time: Option<String>,
    last_seq: Option<u64>,
    last_detail: Option<String>,
    /// The file, for contract files.
    file: Option<String>,
}

/// A preventive contract in `con contracts list`: what the OS enforces,
/// registered in the contracts directory.
#[derive(Debug, Serialize)]
struct Preventive {
    contract: String,
    description: String,
    /// `system` or `agent:<name>`.
    scope: String,
    /// The agent it is about, `null` for every agent.
    applies_to: Option<String>,
    /// What enforces it (`nftables`, `acl`, `sudoers`, `file-modes`,
    /// `systemd`, …), if the file says.
    mechanism: Option<String>,
    /// How, if the file says.
    enforcement: Option<String>,
    /// Checks that verify the mechanism is in place (listed with the
    /// others), if any.
    checks: usize,
    file: String,
}

fn preventive(loaded: &con_contracts::Loaded) -> Vec<Preventive> {
    loaded
        .contracts
        .iter()
        .filter(|c| c.contract.kind == con_contracts::ContractType::Preventive)
        .map(|c| Preventive {
            contract: c.contract.id.clone(),
            description: c.contract.description.clone(),
            scope: match c.contract.scope.agent() {
                Some(a) => format!("agent:{a}"),
                None => "system".to_owned(),
            },
            applies_to: c.contract.applies_to().map(str::to_owned),
            mechanism: c.contract.mechanism.clone(),
            enforcement: c.contract.enforcement.clone(),
            checks: c.contract.checks.len(),
            file: c.file.display().to_string(),
        })
        .collect()
}

fn list(args: &ListArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let dir = layout.contracts_dir();
    let loaded =
        con_contracts::load_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut states = CheckStates::default();
    Client::connect(&layout.socket())?.query(
        Query {
            from_seq: 1,
            kind: Some(ContractResult::SPEC.id),
            ..Query::default()
        },
        |bytes| {
            if let Ok(event) = Event::from_stored(&bytes)
                && let Payload::ContractResult(r) = event.payload
            {
                states.observe(
                    (r.contract, r.check, r.scope_agent),
                    r.status,
                    event.envelope.seq,
                    event.envelope.ts_unix_nanos,
                    &r.detail,
                );
            }
            true
        },
    )?;
    let mut rows = Vec::new();
    let mut listed = std::collections::BTreeSet::new();
    for c in &loaded.contracts {
        for check in &c.contract.checks {
            let key = (
                c.contract.id.clone(),
                check.name.clone(),
                c.contract.scope.agent().map(str::to_owned),
            );
            rows.push(row(
                &states,
                &key,
                c.contract.kind.as_str(),
                c.contract.frequency.map(|f| f.as_secs()),
                Some(c.file.display().to_string()),
            ));
            listed.insert(key);
        }
    }
    // Checks the log knows that no file defines: the built-in checks, and
    // results of files since removed or broken.
    for key in states.checks.keys() {
        if !listed.contains(key) {
            let kind = if key.1 == con_daemon::LOAD_CHECK {
                "file"
            } else {
                "built-in"
            };
            rows.push(row(&states, key, kind, None, None));
        }
    }
    if args.json {
        #[derive(Serialize)]
        struct Listing<'a> {
            checks: &'a [Row],
            preventive: Vec<Preventive>,
            broken: Vec<String>,
        }
        let broken = loaded.broken.iter().map(ToString::to_string).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&Listing {
                checks: &rows,
                preventive: preventive(&loaded),
                broken
            })?
        );
    } else {
        for r in &rows {
            let state = match (&r.failing_since, r.state) {
                (Some(since), _) => format!("failing since {since}"),
                (None, s) => s.to_owned(),
            };
            let last = match (&r.last_status, &r.last_time) {
                (Some(s), Some(t)) => format!(
                    "last {} at {t}: {}",
                    s.as_str(),
                    escape_control(r.last_detail.as_deref().unwrap_or_default())
                ),
                _ => "never evaluated".to_owned(),
            };
            println!(
                "{:<14} {:<28} {:<10} {:<32} {}",
                escape_control(&r.contract),
                escape_control(&r.check),
                r.kind,
                state,
                last
            );
        }
        let registry = preventive(&loaded);
        if !registry.is_empty() {
            println!("preventive (enforced by the OS, registered here):");
            for p in &registry {
                println!(
                    "  {:<14} {:<10} {:<16} {}",
                    escape_control(&p.contract),
                    escape_control(p.mechanism.as_deref().unwrap_or("-")),
                    match &p.applies_to {
                        Some(a) => format!("for {}", escape_control(a)),
                        None => "for every agent".to_owned(),
                    },
                    escape_control(&p.description)
                );
            }
        }
        for b in &loaded.broken {
            println!("broken: {}", escape_control(&b.to_string()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row(
    states: &CheckStates,
    key: &con_contracts::CheckKey,
    kind: &str,
    frequency_secs: Option<u64>,
    file: Option<String>,
) -> Row {
    let st = states.checks.get(key);
    let state = match st {
        None => "unknown",
        Some(s) if s.failing_since.is_some() => "failing",
        Some(s) if s.last == CheckStatus::Skipped => "skipped",
        Some(_) => "passing",
    };
    Row {
        contract: key.0.clone(),
        check: key.1.clone(),
        kind: kind.to_owned(),
        scope_agent: key.2.clone(),
        frequency_secs,
        state,
        failing_since: st.and_then(|s| s.failing_since).map(|(_, t)| rfc3339(t)),
        failing_since_seq: st.and_then(|s| s.failing_since).map(|(seq, _)| seq),
        last_status: st.map(|s| s.last),
        last_time: st.map(|s| rfc3339(s.last_time)),
        last_seq: st.map(|s| s.last_seq),
        last_detail: st.map(|s| s.last_detail.clone()),
        file,
    }
}

fn rfc3339(nanos: i64) -> String {
    humantime::format_rfc3339_seconds(con_event::json::recorded_time(nanos)).to_string()
}
