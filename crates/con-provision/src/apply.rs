//! Applying a plan (only the differences, in plan order) and checking a host
//! against it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use con_event::BlobRef;
use con_event::payloads::ProvisionApplied;
use con_layout::Layout;
use serde::Serialize;

use crate::api::egress;
use crate::host::{self, Converged, run};
use crate::plan::{FileKind, Plan, Resource};

/// How to apply.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Report what would change; change nothing.
    pub dry_run: bool,
    /// Apply the egress rules inside this network namespace instead of the
    /// host's (tests; `ip netns add`).
    pub netns: Option<String>,
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "error")]
pub enum StepStatus {
    /// Changed (or, in a dry run, would be).
    Done,
    /// Could not be applied; the message says why.
    Failed(String),
    /// Information, not a change (e.g. systemd is not running).
    Note,
}

/// One reported step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The change, e.g. `+ user a-concierge (groups agents,operators)`.
    pub change: String,
    /// Its outcome.
    #[serde(flatten)]
    pub status: StepStatus,
}

impl std::fmt::Display for Step {
    /// One line: the change, and why it failed if it did.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.status {
            StepStatus::Failed(e) => write!(f, "{} FAILED: {e}", self.change),
            StepStatus::Done | StepStatus::Note => f.write_str(&self.change),
        }
    }
}

/// Everything an apply did, in order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The steps.
    pub steps: Vec<Step>,
    /// Agents whose units were withheld because a security step failed.
    pub withheld: Vec<String>,
}

impl Report {
    /// How many changes were made (or would be, in a dry run).
    pub fn changes(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Done)
            .count()
    }

    /// The steps that failed.
    pub fn failed(&self) -> Vec<&Step> {
        self.steps
            .iter()
            .filter(|s| matches!(s.status, StepStatus::Failed(_)))
            .collect()
    }

    /// The `provision.applied` event recording this report for `command`
    /// (`commission scribe`), and the attachment it references: every step,
    /// one line each.
    pub fn applied_event(&self, command: &str) -> (ProvisionApplied, Vec<u8>) {
        let steps: Vec<String> = self.steps.iter().map(Step::to_string).collect();
        let steps = steps.join("\n").into_bytes();
        let applied = ProvisionApplied {
            command: command.to_owned(),
            changes: u32::try_from(self.changes()).unwrap_or(u32::MAX),
            failed: self.failed().iter().map(ToString::to_string).collect(),
            disabled_agents: self.withheld.clone(),
            steps: BlobRef::of(&steps),
        };
        (applied, steps)
    }
}

/// One difference between the plan and the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The change applying would make (`~ mode … 0755 -> 0700`), or what
    /// could not be read.
    pub change: String,
}

/// Applies `plan`: each resource is compared with the host and only the
/// differences are fixed, in plan order. A failed step does not stop the
/// run, but if it is security-relevant for an agent (its user, directories,
/// ACLs, sudoers, instructions, skills) that agent's units are neither
/// written nor enabled: an agent is never started half-provisioned.
pub fn apply(plan: &Plan, layout: &Layout, options: &ApplyOptions) -> Report {
    let dry = options.dry_run;
    let acl_paths = acl_paths(plan);
    let mut report = Report::default();
    let mut failed_agents: BTreeSet<String> = BTreeSet::new();
    let mut units_changed = false;
    let mut catalog_changed = false;
    for resource in &plan.resources {
        match resource {
            Resource::Unit {
                name,
                agent: Some(agent),
                ..
            } if failed_agents.contains(agent) => {
                report.steps.push(Step {
                    change: format!("! unit {name}"),
                    status: StepStatus::Failed(format!(
                        "not installed: agent {agent} is not safely provisioned"
                    )),
                });
                continue;
            }
            Resource::Egress { table, enabled } => {
                egress_step(plan, table, *enabled, options, &mut report);
                continue;
            }
            _ => {}
        }
        let has_acl = resource_path(resource).is_some_and(|p| acl_paths.contains(p));
        let Converged { changes, error } = host::converge(resource, has_acl, dry);
        if !changes.is_empty() {
            units_changed |= matches!(resource, Resource::Unit { .. });
            catalog_changed |= matches!(
                resource,
                Resource::File {
                    kind: FileKind::Catalog,
                    ..
                }
            );
        }
        let n = changes.len();
        for (i, change) in changes.into_iter().enumerate() {
            // Fixes are made in the order reported, so the error belongs to the last one.
            let status = match &error {
                Some(e) if i + 1 == n => StepStatus::Failed(e.clone()),
                _ => StepStatus::Done,
            };
            report.steps.push(Step { change, status });
        }
        if let Some(e) = error {
            if n == 0 {
                report.steps.push(Step {
                    change: format!("! {}", resource.render(Path::new("/"))),
                    status: StepStatus::Failed(e),
                });
            }
            if let Some(agent) = resource.guards_agent() {
                failed_agents.insert(agent.to_owned());
            }
        }
    }
    if !dry {
        start_units(plan, layout, &failed_agents, units_changed, &mut report);
        if catalog_changed && layout.is_host_root() {
            report
                .steps
                .push(match run("journalctl", &["--update-catalog"]) {
                    Ok(()) => Step {
                        change: "~ journal catalog rebuilt".into(),
                        status: StepStatus::Note,
                    },
                    Err(e) => Step {
                        change: "! journalctl --update-catalog".into(),
                        status: StepStatus::Failed(e),
                    },
                });
        }
    }
    report.withheld = failed_agents.into_iter().collect();
    report
}

/// Every difference between `plan` and the host: what [`apply`] would change.
pub fn check(plan: &Plan, layout: &Layout, netns: Option<&str>) -> Vec<Drift> {
    let options = ApplyOptions {
        dry_run: true,
        netns: netns.map(str::to_owned),
    };
    apply(plan, layout, &options)
        .steps
        .into_iter()
        .filter_map(|s| match s.status {
            StepStatus::Done => Some(Drift { change: s.change }),
            StepStatus::Failed(e) => Some(Drift {
                change: format!("{}: {e}", s.change),
            }),
            StepStatus::Note => None,
        })
        .collect()
}

fn acl_paths(plan: &Plan) -> BTreeSet<PathBuf> {
    plan.resources
        .iter()
        .filter_map(|r| match r {
            Resource::Acl { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect()
}

fn resource_path(resource: &Resource) -> Option<&Path> {
    match resource {
        Resource::Dir { path, .. } | Resource::File { path, .. } => Some(path),
        _ => None,
    }
}

fn egress_step(
    plan: &Plan,
    table: &str,
    enabled: bool,
    options: &ApplyOptions,
    report: &mut Report,
) {
    if !enabled {
        report.steps.push(Step {
            change: format!("- egress table {table} skipped: outbound_filter = false"),
            status: StepStatus::Note,
        });
        return;
    }
    // Agents whose user does not exist yet (dry run) have no uid to filter.
    let uids: Vec<(String, u32)> = plan
        .agents
        .iter()
        .filter_map(|(agent, user)| {
            host::uid_of(user)
                .ok()
                .map(|uid| (agent.clone(), uid.as_raw()))
        })
        .collect();
    let (resolvers, _) = egress::resolvers(&plan.network);
    let rules = egress::plan(&plan.network, &uids, table, &resolvers);
    let netns = options.netns.as_deref();
    let step = match egress::drift(&rules, netns) {
        Err(e) => Step {
            change: format!("! egress table {table}"),
            status: StepStatus::Failed(e.to_string()),
        },
        Ok(drift) if drift.is_empty() => return,
        Ok(drift) => {
            let change = format!("~ egress table {table}: {}", drift.join("; "));
            let status = if options.dry_run {
                StepStatus::Done
            } else {
                match egress::apply(&rules, netns) {
                    Ok(()) => StepStatus::Done,
                    Err(e) => StepStatus::Failed(e.to_string()),
                }
            };
            Step { change, status }
        }
    };
    report.steps.push(step);
}

/// Whether units are started and stopped here: systemd is PID 1 and this is
/// the real root.
pub(crate) fn systemd_manages(layout: &Layout) -> bool {
    layout.is_host_root() && Path::new(con_layout::SYSTEMD_BOOTED_MARKER).is_dir()
}

/// With systemd as PID 1 on the real root: reload, then enable and start
/// every unit marked for it whose agent is safely provisioned.
fn start_units(
    plan: &Plan,
    layout: &Layout,
    failed_agents: &BTreeSet<String>,
    units_changed: bool,
    report: &mut Report,
) {
    if !systemd_manages(layout) {
        report.steps.push(Step {
            change: "- systemd not running: units written, not started".into(),
            status: StepStatus::Note,
        });
        return;
    }
    if units_changed && let Err(e) = run("systemctl", &["daemon-reload"]) {
        report.steps.push(Step {
            change: "! systemctl daemon-reload".into(),
            status: StepStatus::Failed(e),
        });
        return;
    }
    for resource in &plan.resources {
        let Resource::Unit {
            name,
            enable: true,
            agent,
            ..
        } = resource
        else {
            continue;
        };
        if agent.as_ref().is_some_and(|a| failed_agents.contains(a)) {
            // Fail closed: a unit enabled by an earlier run is stopped too.
            if run("systemctl", &["is-enabled", "--quiet", name]).is_ok() {
                let status = match run("systemctl", &["disable", "--now", name]) {
                    Ok(()) => StepStatus::Done,
                    Err(e) => StepStatus::Failed(e),
                };
                report.steps.push(Step {
                    change: format!("~ disable --now {name}"),
                    status,
                });
            }
            continue;
        }
        let enabled = run("systemctl", &["is-enabled", "--quiet", name]).is_ok();
        let active = run("systemctl", &["is-active", "--quiet", name]).is_ok();
        if enabled && active {
            continue;
        }
        let status = match run("systemctl", &["enable", "--now", name]) {
            Ok(()) => StepStatus::Done,
            Err(e) => StepStatus::Failed(e),
        };
        report.steps.push(Step {
            change: format!("~ enable --now {name}"),
            status,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_applied_event_lists_every_step_and_the_failures() {
        let step = |change: &str, status| Step {
            change: change.to_owned(),
            status,
        };
        let report = Report {
            steps: vec![
                step("+ user a-x", StepStatus::Done),
                step("+ sudoers /s", StepStatus::Failed("visudo".into())),
                step("systemd is not running", StepStatus::Note),
            ],
            withheld: vec!["x".into()],
        };
        let (applied, steps) = report.applied_event("commission x");
        assert_eq!(
            String::from_utf8(steps.clone()).unwrap(),
            "+ user a-x\n+ sudoers /s FAILED: visudo\nsystemd is not running"
        );
        assert_eq!(applied.steps, BlobRef::of(&steps));
        assert_eq!(applied.changes, 1);
        assert_eq!(applied.failed, ["+ sudoers /s FAILED: visudo"]);
        assert_eq!(applied.disabled_agents, ["x"]);
    }
}
