//! `con policy explain <agent>`: what one agent may do, read from the plan
//! (what bootstrap enforces), not probed on the host.
//!
//! [`explain`] is pure: it reads the plan's resources that name the agent
//! (its user, the directories and ACL entries granting it or its groups
//! access, its sudoers drop-in, its units) and the config lines they come
//! from. Two facts need IO and are passed in by the caller: each service
//! unit's exposure score ([`exposure`], which runs `systemd-analyze`) and
//! the contracts installed on the host ([`scan_contracts`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use con_config::{Config, Tier};
use con_layout::Layout;
use serde::Serialize;

use crate::ProvisionError;
use crate::config_edit::ConfigLines;
use crate::plan::{AclTag, Plan, Resource, display_under};

/// A config setting cited as the reason for a right.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// The dotted key (`agents.sysadmin.tier`, `network.allowed_ports`).
    pub key: String,
    /// Its line in the config file, if it is written there (else a default).
    pub line: Option<usize>,
}

impl Source {
    fn of(lines: &ConfigLines, key: impl Into<String>) -> Self {
        let key = key.into();
        Self {
            line: lines.line(&key),
            key,
        }
    }

    /// `con.toml:LINE`, or `default` when the key is not written.
    pub fn cite(&self, file: &str) -> String {
        match self.line {
            Some(line) => format!("{file}:{line}"),
            None => format!("{file}: not set ({}: default)", self.key),
        }
    }
}

/// An inbox the agent can drop tasks into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboxRight {
    /// The agent owning the inbox.
    pub agent: String,
    /// The inbox.
    pub path: PathBuf,
    /// Why.
    pub why: String,
    /// The setting it follows from.
    pub source: Source,
}

/// Access to one directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirRight {
    /// The directory.
    pub path: PathBuf,
    /// Effective `rwx` (after the ACL mask).
    pub perm: String,
    /// Through what: `owner`, `group <g>`, `acl u:<user>`, `acl g:<group>`.
    pub via: String,
}

/// One sudo rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SudoRule {
    /// The rule as installed.
    pub rule: String,
    /// The profile template it comes from (`<etc>/sudoers/<role>`).
    pub template: PathBuf,
    /// The role.
    pub role: String,
    /// The agent's `roles` setting.
    pub source: Source,
}

/// One egress rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressRule {
    /// What passes (or not).
    pub rule: String,
    /// The setting, if one decides it.
    pub source: Option<Source>,
}

/// The egress filter of the agent's uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Egress {
    /// The nftables table (`inet <table>`).
    pub table: String,
    /// `[network] outbound_filter`.
    pub filtered: bool,
    /// Its setting.
    pub source: Source,
    /// The rules, in the order nftables applies them.
    pub rules: Vec<EgressRule>,
}

/// Which IP ports the agent's runs may listen on, as its service unit
/// says (`SocketBindDeny=`/`SocketBindAllow=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listening {
    /// The service unit that says it, if the agent has one.
    pub unit: Option<String>,
    /// Whether binding IP sockets is denied (`SocketBindDeny=any`).
    pub denied: bool,
    /// Exceptions (`SocketBindAllow=` values), if any.
    pub allowed: Vec<String>,
}

/// Whose listeners the gateway sends this agent's model calls to when they
/// go in plain HTTP to this host: root and these users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoopbackServers {
    /// `[gateway] loopback_server_users`.
    pub users: Vec<String>,
    /// Its setting.
    pub source: Source,
}

/// A unit that runs the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitInfo {
    /// Unit name.
    pub name: String,
    /// Unit file.
    pub path: PathBuf,
    /// For a service: its `systemd-analyze security --offline=true` exposure.
    pub exposure: Option<Exposure>,
}

/// An exposure score, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exposure {
    /// 0 (best) to 10 (worst), with systemd's word for it (`OK`, `MEDIUM`…).
    Score {
        /// The number as systemd-analyze prints it.
        score: String,
        /// Its label.
        label: String,
    },
    /// systemd-analyze is missing or printed no score.
    Unavailable(String),
}

/// A contract file's `id:` and `scope:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContractRef {
    /// The file.
    pub file: PathBuf,
    /// Its `id:` (or the file name when there is none).
    pub id: String,
    /// Its `scope:` (`system`, `agent:<name>`), if written.
    pub scope: Option<String>,
    /// What it registers, if it is a preventive contract that parses.
    pub preventive: Option<Registered>,
}

/// A preventive contract: a rule some mechanism enforces elsewhere,
/// registered in the contracts directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registered {
    /// Its `description:`.
    pub description: String,
    /// What enforces it (`mechanism:`), if written.
    pub mechanism: Option<String>,
    /// The agent it is about (`scope: agent:<name>` or `agent:`); `None`:
    /// every agent.
    pub applies_to: Option<String>,
}

/// The contracts that watch the agent, and the preventive ones that
/// constrain it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Contracts {
    /// Where they were looked for.
    pub dir: PathBuf,
    /// How many contract files are installed there.
    pub installed: usize,
    /// Those (not preventive) whose scope is `system` or `agent:<this
    /// agent>`.
    pub watching: Vec<ContractRef>,
    /// The preventive contracts for every agent or for this one.
    pub preventive: Vec<ContractRef>,
}

/// Everything one agent may do, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// The agent.
    pub agent: String,
    /// Its Linux user.
    pub user: String,
    /// Its tier.
    pub tier: Tier,
    /// Its `tier =` line.
    pub tier_source: Source,
    /// Its supplementary groups.
    pub groups: Vec<String>,
    /// Inboxes it can write (its own first).
    pub inboxes: Vec<InboxRight>,
    /// Directories it can read, write or traverse through owner, group or ACL.
    pub dirs: Vec<DirRight>,
    /// The installed sudoers drop-in, if it gets one.
    pub sudoers_file: Option<PathBuf>,
    /// Its sudo rules.
    pub sudo: Vec<SudoRule>,
    /// What those rules let it do, said plainly (what it can read with
    /// them, and how far con lets its grants of `con` commands reach).
    pub sudo_reach: Vec<String>,
    /// Its egress filter.
    pub egress: Egress,
    /// IP ports its runs may listen on.
    pub listening: Listening,
    /// Local model servers trusted with its calls.
    pub loopback_servers: LoopbackServers,
    /// Its units.
    pub units: Vec<UnitInfo>,
    /// Contracts that watch it.
    pub contracts: Contracts,
}

/// Plain statements of what `rules` reach, for an agent of `tier`: the
/// journal is everyone's, and con bounds its own commands by the caller
/// (`crate::commission::Delegation`).
fn sudo_reach(rules: &[SudoRule], tier: Tier) -> Vec<String> {
    let grants = |needle: &str| rules.iter().any(|r| r.rule.contains(needle));
    let mut reach = Vec::new();
    if grants("/journalctl ") {
        reach.push(
            "read the whole system journal as root: every agent's recorded events \
             (task contents, prompts, model replies, tool output), not only its own"
                .to_owned(),
        );
    }
    if grants(" ^commission ") {
        reach.push(format!(
            "commission agents of tier {tier} or lower, with only roles it holds itself and \
             none that carries sudo rights (con refuses the rest)"
        ));
    }
    if grants(" ^decommission ") {
        reach.push(format!(
            "decommission only agents below tier {tier} that hold no role with sudo rights \
             (con refuses the rest)"
        ));
    }
    if grants("/systemctl ^restart con-agent@") {
        reach.push("restart any agent's unit".to_owned());
    }
    reach
}

/// What [`explain`] needs besides the plan.
pub struct ExplainInput<'a> {
    /// The config the plan was made from.
    pub config: &'a Config,
    /// Line numbers of its settings.
    pub lines: &'a ConfigLines,
    /// Where the profile (and so the sudoers templates) lives.
    pub profile_dir: &'a Path,
    /// The installed contracts ([`scan_contracts`]).
    pub contracts: &'a [ContractRef],
    /// Where agents may send DNS, and where that list comes from
    /// ([`crate::egress::resolvers`]).
    pub resolvers: (&'a [std::net::IpAddr], &'a str),
}

/// The effective policy of `agent` under `plan`. `score` gives a service
/// unit's exposure from its name and text (see [`exposure`]).
pub fn explain(
    plan: &Plan,
    layout: &Layout,
    input: &ExplainInput<'_>,
    agent: &str,
    score: &dyn Fn(&str, &str) -> Exposure,
) -> Result<Policy, ProvisionError> {
    let config = input.config;
    let lines = input.lines;
    let a = config.agent(agent).ok_or_else(|| {
        ProvisionError::Invalid(format!(
            "no agent named {agent} in {}",
            config.source.display()
        ))
    })?;
    let user = layout.user(agent);
    let groups = crate::plan::agent_groups(layout, a)?;
    let tier_source = Source::of(lines, format!("agents.{agent}.tier"));
    let roles_source = Source::of(lines, format!("agents.{agent}.roles"));

    let mut inboxes = Vec::new();
    let mut dirs = Vec::new();
    // Owner and group rights first (plan order), then ACL grants.
    let acls: Vec<(&PathBuf, &Vec<crate::plan::AclEntry>)> = plan
        .resources
        .iter()
        .filter_map(|r| match r {
            Resource::Acl { path, access, .. } => Some((path, access)),
            _ => None,
        })
        .collect();
    for r in &plan.resources {
        let Resource::Dir {
            path,
            owner,
            group,
            mode,
            ..
        } = r
        else {
            continue;
        };
        let acl = acls.iter().find(|(p, _)| *p == path).map(|(_, a)| *a);
        let mask = acl.map(|entries| {
            entries
                .iter()
                .find(|e| e.tag == AclTag::Mask)
                .map_or(0, |e| e.perm)
        });
        if *owner == user {
            dirs.push(DirRight {
                path: path.clone(),
                perm: rwx((mode >> 6) & 7),
                via: "owner".to_owned(),
            });
        } else if *group == user || groups.contains(group) {
            let perm = match acl {
                Some(entries) => {
                    entries
                        .iter()
                        .find(|e| e.tag == AclTag::GroupObj)
                        .map_or(0, |e| e.perm)
                        & mask.unwrap_or(7)
                }
                None => (mode >> 3) & 7,
            };
            if perm != 0 {
                dirs.push(DirRight {
                    path: path.clone(),
                    perm: rwx(perm),
                    via: format!("group {group}"),
                });
            }
        }
        for e in acl.into_iter().flatten() {
            let via = match &e.tag {
                AclTag::User(u) if *u == user => format!("acl u:{u}"),
                AclTag::Group(g) if groups.contains(g) => format!("acl g:{g}"),
                _ => continue,
            };
            let perm = e.perm & mask.unwrap_or(7);
            if perm != 0 {
                dirs.push(DirRight {
                    path: path.clone(),
                    perm: rwx(perm),
                    via,
                });
            }
        }
    }
    for target in &config.agents {
        let inbox = layout.agent_inbox(&target.name);
        let writable = dirs.iter().any(|d| d.path == inbox && d.perm.contains('w'));
        if !writable {
            continue;
        }
        let (why, source) = if target.name == agent {
            (
                "its own inbox".to_owned(),
                Source::of(lines, format!("agents.{agent}")),
            )
        } else {
            (
                format!("tier {} may task every other agent", a.tier),
                tier_source.clone(),
            )
        };
        let right = InboxRight {
            agent: target.name.clone(),
            path: inbox,
            why,
            source,
        };
        if target.name == agent {
            inboxes.insert(0, right);
        } else {
            inboxes.push(right);
        }
    }

    let mut sudoers_file = None;
    let mut sudo = Vec::new();
    let mut units = Vec::new();
    let mut listening = Listening {
        unit: None,
        denied: false,
        allowed: Vec::new(),
    };
    for r in &plan.resources {
        match r {
            Resource::Sudoers {
                agent: owner,
                path,
                text: Some(text),
            } if owner == agent => {
                sudoers_file = Some(path.clone());
                let mut role = String::new();
                for line in text.lines() {
                    let trimmed = line.trim();
                    if let Some(rest) = trimmed.strip_prefix("# From sudoers/") {
                        role = rest.split(',').next().unwrap_or_default().to_owned();
                        continue;
                    }
                    if trimmed.is_empty() || trimmed.starts_with('#') {
                        continue;
                    }
                    sudo.push(SudoRule {
                        rule: trimmed.to_owned(),
                        template: input.profile_dir.join("sudoers").join(&role),
                        role: role.clone(),
                        source: roles_source.clone(),
                    });
                }
            }
            Resource::Unit {
                name,
                path,
                text,
                agent: Some(owner),
                ..
            } if owner == agent => {
                if name.ends_with(".service") {
                    let values = |key: &str| -> Vec<String> {
                        text.lines()
                            .filter_map(|l| l.strip_prefix(key))
                            .map(|v| v.trim().to_owned())
                            .collect()
                    };
                    listening = Listening {
                        unit: Some(name.clone()),
                        denied: values("SocketBindDeny=").iter().any(|v| v == "any"),
                        allowed: values("SocketBindAllow="),
                    };
                }
                units.push(UnitInfo {
                    name: name.clone(),
                    path: path.clone(),
                    exposure: name.ends_with(".service").then(|| score(name, text)),
                });
            }
            _ => {}
        }
    }

    let network = &config.network;
    let net = |key: &str| Some(Source::of(lines, format!("network.{key}")));
    let mut rules = Vec::new();
    if network.outbound_filter {
        let allowed = |yes: bool| if yes { "allowed" } else { "rejected" };
        rules.push(EgressRule {
            rule: format!("loopback: {}", allowed(network.allow_loopback)),
            source: net("allow_loopback"),
        });
        rules.push(EgressRule {
            rule: "replies on connections already made: allowed".to_owned(),
            source: None,
        });
        let (resolvers, from) = input.resolvers;
        rules.push(EgressRule {
            rule: if !network.allow_dns {
                "DNS (udp and tcp port 53): rejected".to_owned()
            } else if resolvers.is_empty() {
                format!(
                    "DNS (udp and tcp port 53): rejected: no resolver is known ({from} names none)"
                )
            } else {
                let list: Vec<String> = resolvers.iter().map(ToString::to_string).collect();
                format!(
                    "DNS (udp and tcp port 53) to {} only (from {from}): allowed",
                    list.join(", ")
                )
            },
            source: net(if network.dns_servers.is_some() {
                "dns_servers"
            } else {
                "allow_dns"
            }),
        });
        let ports: Vec<String> = network.allowed_ports.iter().map(u16::to_string).collect();
        rules.push(EgressRule {
            rule: if ports.is_empty() {
                "tcp: no ports".to_owned()
            } else {
                format!("tcp to ports {}: allowed", ports.join(", "))
            },
            source: net("allowed_ports"),
        });
        rules.push(EgressRule {
            rule: "everything else: rejected (icmp admin-prohibited)".to_owned(),
            source: None,
        });
    } else {
        rules.push(EgressRule {
            rule: "everything: allowed (no filter)".to_owned(),
            source: net("outbound_filter"),
        });
    }

    Ok(Policy {
        agent: agent.to_owned(),
        user,
        tier: a.tier,
        tier_source,
        groups,
        inboxes,
        dirs,
        sudo_reach: sudo_reach(&sudo, a.tier),
        sudoers_file,
        sudo,
        egress: Egress {
            table: layout.egress_table(),
            filtered: network.outbound_filter,
            source: Source::of(lines, "network.outbound_filter"),
            rules,
        },
        listening,
        loopback_servers: LoopbackServers {
            users: config.gateway.loopback_server_users.clone(),
            source: Source::of(lines, "gateway.loopback_server_users"),
        },
        units,
        contracts: Contracts {
            dir: layout.contracts_dir(),
            installed: input.contracts.len(),
            watching: input
                .contracts
                .iter()
                .filter(|c| {
                    c.preventive.is_none()
                        && (c.scope.as_deref() == Some("system")
                            || c.scope.as_deref() == Some(&format!("agent:{agent}")))
                })
                .cloned()
                .collect(),
            preventive: input
                .contracts
                .iter()
                .filter(|c| {
                    c.preventive
                        .as_ref()
                        .is_some_and(|p| p.applies_to.as_deref().is_none_or(|a| a == agent))
                })
                .cloned()
                .collect(),
        },
    })
}

fn rwx(perm: u32) -> String {
    let bit = |b: u32, c: char| if perm & b != 0 { c } else { '-' };
    [bit(4, 'r'), bit(2, 'w'), bit(1, 'x')].iter().collect()
}

impl Policy {
    /// The policy as text; paths under `root` are written `<root>/…` and
    /// settings are cited as `<config file name>:LINE`.
    pub fn render(&self, root: &Path, config_name: &str) -> String {
        let p = |path: &Path| display_under(root, path);
        let cite = |s: &Source| s.cite(config_name);
        let mut out = format!(
            "agent {}: user {}, tier {} ({})\ngroups: {}\n",
            self.agent,
            self.user,
            self.tier,
            cite(&self.tier_source),
            self.groups.join(", ")
        );
        out.push_str("\ninboxes it can write:\n");
        if self.inboxes.is_empty() {
            out.push_str("  none\n");
        }
        let width = self
            .inboxes
            .iter()
            .map(|i| i.agent.len())
            .max()
            .unwrap_or(0);
        for i in &self.inboxes {
            out.push_str(&format!(
                "  {:width$}  {}: {} ({})\n",
                i.agent,
                p(&i.path),
                i.why,
                cite(&i.source)
            ));
        }
        out.push_str("\ndirectories (owner, group and ACL entries naming it or its groups):\n");
        let mut dirs: Vec<(String, &DirRight)> =
            self.dirs.iter().map(|d| (p(&d.path), d)).collect();
        dirs.sort_by(|a, b| a.0.cmp(&b.0));
        let width = dirs.iter().map(|(path, _)| path.len()).max().unwrap_or(0);
        for (path, d) in dirs {
            out.push_str(&format!("  {}  {path:width$}  {}\n", d.perm, d.via));
        }
        match &self.sudoers_file {
            None => out.push_str("\nsudo: none (no role of it has a sudoers template)\n"),
            Some(file) => {
                out.push_str(&format!("\nsudo: {}\n", p(file)));
                let mut last = None;
                for rule in &self.sudo {
                    if last != Some(&rule.template) {
                        out.push_str(&format!(
                            "  from {} (role {}, roles at {}):\n",
                            p(&rule.template),
                            rule.role,
                            cite(&rule.source)
                        ));
                        last = Some(&rule.template);
                    }
                    out.push_str(&format!("    {}\n", rule.rule));
                }
                if !self.sudo_reach.is_empty() {
                    out.push_str("  what these let it do:\n");
                    for line in &self.sudo_reach {
                        out.push_str(&format!("    - {line}\n"));
                    }
                }
            }
        }
        out.push_str(&format!(
            "\negress: nftables table inet {}, {} ({})\n",
            self.egress.table,
            if self.egress.filtered {
                "filtered by uid"
            } else {
                "not filtered"
            },
            cite(&self.egress.source)
        ));
        for rule in &self.egress.rules {
            match &rule.source {
                Some(s) => out.push_str(&format!("  {} ({})\n", rule.rule, cite(s))),
                None => out.push_str(&format!("  {}\n", rule.rule)),
            }
        }
        let l = &self.listening;
        out.push_str(&match (&l.unit, l.denied) {
            (Some(unit), true) if l.allowed.is_empty() => format!(
                "\nlistening on IP ports: none (SocketBindDeny=any in {unit}, when systemd starts its runs)\n"
            ),
            (Some(unit), true) => format!(
                "\nlistening on IP ports: only {} (SocketBindDeny=any, SocketBindAllow= in {unit}, when systemd starts its runs)\n",
                l.allowed.join(", ")
            ),
            (Some(unit), false) => {
                format!("\nlistening on IP ports: any free port (nothing in {unit} denies it)\n")
            }
            (None, _) => "\nlistening on IP ports: no unit of its own says\n".to_owned(),
        });
        let trusted: Vec<&str> = std::iter::once("root")
            .chain(self.loopback_servers.users.iter().map(String::as_str))
            .collect();
        out.push_str(&format!(
            "model calls over plain HTTP to this host go only to listeners owned by: {} ({})\n",
            trusted.join(", "),
            cite(&self.loopback_servers.source)
        ));
        out.push_str("\nunits:\n");
        if self.units.is_empty() {
            out.push_str("  none\n");
        }
        for u in &self.units {
            out.push_str(&format!("  {} ({})\n", u.name, p(&u.path)));
            match &u.exposure {
                Some(Exposure::Score { score, label }) => out.push_str(&format!(
                    "    exposure {score} {label} (systemd-analyze security --offline=true)\n"
                )),
                Some(Exposure::Unavailable(why)) => {
                    out.push_str(&format!("    exposure unavailable: {why}\n"));
                }
                None => {}
            }
        }
        let c = &self.contracts;
        out.push_str(&format!(
            "\ncontracts watching it ({}; listed from their id: and scope: lines; `con contracts list` shows how they fare):\n",
            p(&c.dir)
        ));
        if c.installed == 0 {
            out.push_str("  none installed\n");
        } else if c.watching.is_empty() {
            out.push_str(&format!(
                "  none of the {} installed has scope system or agent:{}\n",
                c.installed, self.agent
            ));
        }
        for contract in &c.watching {
            out.push_str(&format!(
                "  {}  scope {}  ({})\n",
                contract.id,
                contract.scope.as_deref().unwrap_or("-"),
                p(&contract.file)
            ));
        }
        out.push_str(&format!(
            "\npreventive contracts that hold for it (enforced by the mechanism named, registered in {}):\n",
            p(&c.dir)
        ));
        if c.preventive.is_empty() {
            out.push_str("  none registered\n");
        }
        for contract in &c.preventive {
            let Some(r) = &contract.preventive else {
                continue;
            };
            out.push_str(&format!(
                "  {}  {}  for {}: {}\n",
                contract.id,
                r.mechanism.as_deref().unwrap_or("-"),
                r.applies_to
                    .as_deref()
                    .map_or_else(|| "every agent".to_owned(), |a| format!("agent {a}")),
                r.description
            ));
        }
        out
    }
}

/// The exposure `systemd-analyze security --offline=true` gives the unit
/// `name` with content `text` (written to a temp directory under its name).
pub fn exposure(name: &str, text: &str) -> Exposure {
    let result = (|| -> Result<Exposure, String> {
        let dir = tempfile::Builder::new()
            .prefix("con-policy-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let file = dir.path().join(name);
        std::fs::File::create(&file)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let out = match Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&file)
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Exposure::Unavailable(
                    "systemd-analyze is not installed".to_owned(),
                ));
            }
            Err(e) => return Err(format!("cannot run systemd-analyze: {e}")),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.contains("Overall exposure level for"))
            .ok_or_else(|| {
                let stderr = String::from_utf8_lossy(&out.stderr);
                format!(
                    "systemd-analyze printed no score: {}",
                    stderr.lines().next().unwrap_or("no output")
                )
            })?;
        let mut words = line
            .rsplit(": ")
            .next()
            .unwrap_or_default()
            .split_whitespace();
        let score = words.next().unwrap_or_default().to_owned();
        // The label may be followed by an emoji; keep the word only.
        let label = words.next().unwrap_or_default().to_owned();
        Ok(Exposure::Score { score, label })
    })();
    result.unwrap_or_else(Exposure::Unavailable)
}

/// The `*.yaml`/`*.yml` files in `dir` (none if it is missing), each with
/// the `id:` and `scope:` of its top level, read as plain text.
pub fn scan_contracts(dir: &Path) -> Result<Vec<ContractRef>, ProvisionError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ProvisionError::io(dir, &e)),
    };
    let mut files = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| ProvisionError::io(dir, &e))?;
        let path = entry.path();
        let yaml = path.extension().is_some_and(|x| x == "yaml" || x == "yml");
        if yaml && entry.file_type().is_ok_and(|t| t.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| ProvisionError::io(&file, &e))?;
        let top = |key: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(|v| {
                        let v = v.split(" #").next().unwrap_or_default().trim();
                        v.trim_matches(|c| c == '"' || c == '\'').to_owned()
                    })
            })
        };
        let id = top("id").unwrap_or_else(|| {
            file.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        // Parsed as well, to tell a preventive contract; a file that does
        // not parse is still listed by its lines.
        let preventive = con_contracts::parse_contract(&file, &text)
            .ok()
            .filter(|c| c.kind == con_contracts::ContractType::Preventive)
            .map(|c| Registered {
                applies_to: c.applies_to().map(str::to_owned),
                description: c.description,
                mechanism: c.mechanism,
            });
        out.push(ContractRef {
            id,
            scope: top("scope"),
            file,
            preventive,
        });
    }
    Ok(out)
}
