//! Per-uid nftables egress filtering.
//!
//! con owns one table, `inet <table>`, and nothing else in the ruleset. Its
//! output chain sends packets from sockets owned by an agent uid (a named
//! set) to the `agents` chain, which lets through loopback, DNS, replies and
//! the allowed TCP ports, and rejects the rest. Packets of every other uid,
//! and packets without a socket (kernel-made resets and ICMP), are not
//! touched.
//!
//! **One transaction.** The script starts with `add table` + `delete table`
//! (so it works whether or not the table exists) and then declares the whole
//! table; `nft -f` loads it atomically, so there is never a moment with no
//! rules or half of them. nft is run as a program (`nft -f -`, inside `ip
//! netns exec <ns>` when a namespace is given): there is no maintained Rust
//! netlink nftables library that would do better.
//!
//! **Drift.** What the table should look like is learnt from the kernel
//! itself: [`drift`] loads the script into a scratch network namespace
//! (`unshare --net`), lists it as JSON, and compares that with the live
//! table's JSON, ignoring handles. Both listings come from the same kernel
//! and the same nft, so formatting and normalisation (set element order,
//! expression rewriting) cannot cause false drift, and nothing needs to be
//! recorded at apply time. It needs root (`CAP_SYS_ADMIN`), as `apply` does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The set of filtered uids, and the chain their packets go through.
const UID_SET: &str = "agent_uids";
const AGENT_CHAIN: &str = "agents";

/// The nftables script for one table: load it with [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPlan {
    /// The table's name (family `inet`).
    pub table: String,
    /// The whole transaction, as given to `nft -f -`.
    pub script: String,
}

/// Why the ruleset could not be read or changed. One line each.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The table name is not an nftables identifier, so it cannot be put in
    /// a script safely.
    #[error("egress table {0:?}: must be letters, digits and _ (starting with a letter)")]
    InvalidTable(String),
    /// A program could not be started.
    #[error("{command}: cannot run: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// A program failed.
    #[error("{command}: {message}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status and error output, on one line.
        message: String,
    },
    /// nft printed something that is not the JSON listing it documents.
    #[error("{command}: unexpected output: {message}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong.
        message: String,
    },
}

/// The egress table for `agent_uids` (agent name, uid) under `network`.
///
/// With `outbound_filter = false` the script deletes the table (if it
/// exists) and adds nothing. Otherwise, for agent uids only:
/// loopback if `allow_loopback` (the daemon and local model servers are
/// there), DNS over UDP and TCP to `resolvers` only if `allow_dns` (any
/// other address on port 53 is a channel out), replies to established
/// connections, TCP to `allowed_ports`; everything else is **rejected**
/// with ICMP administratively-prohibited rather than dropped, so a tool the
/// model runs fails at once with an error naming the cause instead of
/// hanging until its timeout (and burning session time). uid 0 is never
/// filtered: an agent is never root, and filtering root would cut off the
/// host.
pub fn plan(
    network: &con_config::Network,
    agent_uids: &[(String, u32)],
    table: &str,
    resolvers: &[std::net::IpAddr],
) -> EgressPlan {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# con egress filter: the whole table is replaced in one transaction.\n\
         add table inet {table}\n\
         delete table inet {table}"
    );
    if !network.outbound_filter {
        s.push_str("# [network] outbound_filter = false: no table.\n");
        return EgressPlan {
            table: table.to_owned(),
            script: s,
        };
    }
    let mut uids: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for (agent, uid) in agent_uids {
        uids.entry(*uid).or_default().push(agent);
    }
    let _ = writeln!(s, "table inet {table} {{");
    let _ = writeln!(s, "\tset {UID_SET} {{\n\t\ttype uid");
    for (uid, agents) in &uids {
        // Names are only a comment; keep anything odd out of the script.
        let names: Vec<String> = agents
            .iter()
            .map(|a| {
                a.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '?'
                        }
                    })
                    .collect()
            })
            .collect();
        let _ = writeln!(s, "\t\t# {uid}: {}", names.join(", "));
    }
    if uids.remove(&0).is_some() {
        s.push_str("\t\t# uid 0 is left out: root is never filtered.\n");
    }
    if !uids.is_empty() {
        let list: Vec<String> = uids.keys().map(u32::to_string).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(", "));
    }
    s.push_str("\t}\n\n");
    let _ = writeln!(
        s,
        "\tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\t# Only sockets of agent uids; kernel-made packets have none and pass.\n\
         \t\tmeta skuid @{UID_SET} jump {AGENT_CHAIN}\n\
         \t}}\n"
    );
    let _ = writeln!(s, "\tchain {AGENT_CHAIN} {{");
    if network.allow_loopback {
        s.push_str("\t\toif \"lo\" accept\n");
    }
    s.push_str("\t\tct state established,related accept\n");
    if network.allow_dns {
        let (v4, v6): (Vec<&std::net::IpAddr>, Vec<&std::net::IpAddr>) =
            resolvers.iter().partition(|ip| ip.is_ipv4());
        if v4.is_empty() && v6.is_empty() {
            s.push_str("\t\t# DNS is allowed, but no resolver is known: none passes.\n");
        }
        for (family, ips) in [("ip", v4), ("ip6", v6)] {
            if !ips.is_empty() {
                let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    s,
                    "\t\t{family} daddr {{ {} }} meta l4proto {{ tcp, udp }} th dport 53 accept",
                    list.join(", ")
                );
            }
        }
    }
    let ports: BTreeSet<u16> = network.allowed_ports.iter().copied().collect();
    if !ports.is_empty() {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let _ = writeln!(s, "\t\ttcp dport {{ {} }} accept", list.join(", "));
    }
    s.push_str("\t\t# Fail fast and say why, rather than leave a connect() hanging.\n");
    s.push_str("\t\treject with icmpx type admin-prohibited\n");
    s.push_str("\t}\n}\n");
    EgressPlan {
        table: table.to_owned(),
        script: s,
    }
}

/// Where the host's resolvers are read from when `[network] dns_servers`
/// does not name them.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The addresses agents may send DNS to: `[network] dns_servers`, else the
/// nameservers of [`RESOLV_CONF`] (none if it cannot be read or parsed:
/// DNS then passes nowhere, which `con policy explain` shows), with where
/// they came from.
pub fn resolvers(network: &con_config::Network) -> (Vec<std::net::IpAddr>, String) {
    if let Some(servers) = &network.dns_servers {
        return (servers.clone(), "[network] dns_servers".to_owned());
    }
    let servers = std::fs::read(RESOLV_CONF)
        .ok()
        .and_then(|bytes| resolv_conf::Config::parse(bytes).ok())
        .map(|c| c.nameservers.into_iter().map(Into::into).collect())
        .unwrap_or_default();
    (servers, RESOLV_CONF.to_owned())
}

/// Loads `plan` with `nft -f -` (in network namespace `netns` if given):
/// the table is replaced, or deleted, in one transaction.
pub fn apply(plan: &EgressPlan, netns: Option<&str>) -> Result<(), EgressError> {
    check_table(&plan.table)?;
    run(nft(netns, &["-f", "-"]), Some(&plan.script)).map(drop)
}

/// How the live table (in `netns` if given) differs from `plan`, one
/// readable line per difference; empty when it matches.
///
/// Detects a missing or unexpected table, added, removed or reordered rules
/// and chains, and changed set members. See the module documentation for how.
pub fn drift(plan: &EgressPlan, netns: Option<&str>) -> Result<Vec<String>, EgressError> {
    check_table(&plan.table)?;
    let mut scratch = Command::new("unshare");
    scratch
        .args(["--net", "--", "sh", "-c"])
        .arg("nft -f - && exec nft -j list ruleset");
    let expected = Listing::parse(
        &plan.table,
        &run(scratch, Some(&plan.script))?,
        "unshare --net nft",
    )?;

    let tables = run(nft(netns, &["-j", "list", "tables"]), None)?;
    let present = parse_json(&tables, "nft -j list tables")?
        .iter()
        .any(|o| is_ours(o.get("table"), &plan.table, "name"));
    let actual = if present {
        let listing = run(
            nft(netns, &["-j", "list", "table", "inet", &plan.table]),
            None,
        )?;
        Listing::parse(&plan.table, &listing, "nft -j list table")?
    } else {
        Listing::default()
    };
    Ok(expected.differences(&actual, &plan.table))
}

/// Table names go into scripts verbatim: allow identifiers only.
fn check_table(table: &str) -> Result<(), EgressError> {
    let mut chars = table.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && table.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(EgressError::InvalidTable(table.to_owned()))
    }
}

/// `nft <args>`, inside `ip netns exec <ns>` when given.
fn nft(netns: Option<&str>, args: &[&str]) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft"]).args(args);
            c
        }
        None => {
            let mut c = Command::new("nft");
            c.args(args);
            c
        }
    }
}

/// Runs `cmd` with `stdin`, returning its stdout; a failure carries its
/// stderr on one line.
fn run(mut cmd: Command, stdin: Option<&str>) -> Result<String, EgressError> {
    let command = describe(&cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let spawn_err = |source| EgressError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error means nft exited early; its status and stderr say why.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let detail: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Err(EgressError::Failed {
        command,
        message: format!("{} ({})", detail.join("; "), out.status),
    })
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `nftables` array of a JSON listing.
fn parse_json(text: &str, command: &str) -> Result<Vec<Value>, EgressError> {
    let bad = |message: String| EgressError::Output {
        command: command.to_owned(),
        message,
    };
    let value: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    match value.get("nftables") {
        Some(Value::Array(items)) => Ok(items.clone()),
        _ => Err(bad("no \"nftables\" array".to_owned())),
    }
}

/// Whether a listed object (`{"family": "inet", <key>: table, …}`) belongs
/// to our table.
fn is_ours(object: Option<&Value>, table: &str, key: &str) -> bool {
    object.is_some_and(|o| {
        o.get("family").and_then(Value::as_str) == Some("inet")
            && o.get(key).and_then(Value::as_str) == Some(table)
    })
}

/// A table as the kernel lists it, without handles: what [`drift`] compares.
#[derive(Debug, Default, PartialEq)]
struct Listing {
    present: bool,
    /// Chain name → its declaration (type, hook, priority, policy).
    chains: BTreeMap<String, String>,
    /// Set name → declaration and members.
    sets: BTreeMap<String, (String, BTreeSet<String>)>,
    /// Chain name → its rules' expressions, in order.
    rules: BTreeMap<String, Vec<String>>,
}

impl Listing {
    fn parse(table: &str, text: &str, command: &str) -> Result<Self, EgressError> {
        let mut listing = Listing::default();
        for item in parse_json(text, command)? {
            if is_ours(item.get("table"), table, "name") {
                listing.present = true;
            }
            if let Some(chain) = item
                .get("chain")
                .filter(|c| is_ours(Some(c), table, "table"))
            {
                listing
                    .chains
                    .insert(name_of(chain), without(chain, &["handle"]));
            }
            if let Some(set) = item.get("set").filter(|s| is_ours(Some(s), table, "table")) {
                let members = match set.get("elem") {
                    Some(Value::Array(elems)) => elems.iter().map(Value::to_string).collect(),
                    _ => BTreeSet::new(),
                };
                listing
                    .sets
                    .insert(name_of(set), (without(set, &["handle", "elem"]), members));
            }
            if let Some(rule) = item
                .get("rule")
                .filter(|r| is_ours(Some(r), table, "table"))
            {
                let chain = rule
                    .get("chain")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let expr = rule.get("expr").map(Value::to_string).unwrap_or_default();
                listing
                    .rules
                    .entry(chain.to_owned())
                    .or_default()
                    .push(expr);
            }
        }
        Ok(listing)
    }

    /// What `actual` lacks or has beyond `self` (the expected table).
    fn differences(&self, actual: &Listing, table: &str) -> Vec<String> {
        let mut out = Vec::new();
        match (self.present, actual.present) {
            (false, false) => return out,
            (true, false) => {
                out.push(format!("table inet {table} is missing"));
                return out;
            }
            (false, true) => {
                out.push(format!("table inet {table} exists but should not"));
                return out;
            }
            (true, true) => {}
        }
        for (name, (decl, members)) in &self.sets {
            match actual.sets.get(name) {
                None => out.push(format!("set {name} is missing")),
                Some((actual_decl, actual_members)) => {
                    if decl != actual_decl {
                        out.push(format!("set {name} is declared differently: {actual_decl}"));
                    }
                    for m in members.difference(actual_members) {
                        out.push(format!("set {name} lacks {m}"));
                    }
                    for m in actual_members.difference(members) {
                        out.push(format!("set {name} has unexpected {m}"));
                    }
                }
            }
        }
        for name in actual.sets.keys().filter(|n| !self.sets.contains_key(*n)) {
            out.push(format!("unexpected set {name}"));
        }
        for (name, decl) in &self.chains {
            match actual.chains.get(name) {
                None => out.push(format!("chain {name} is missing")),
                Some(d) if d != decl => {
                    out.push(format!("chain {name} is declared differently: {d}"))
                }
                Some(_) => {}
            }
        }
        for name in actual
            .chains
            .keys()
            .filter(|n| !self.chains.contains_key(*n))
        {
            out.push(format!("unexpected chain {name}"));
        }
        let none = Vec::new();
        let chains: BTreeSet<&String> = self.rules.keys().chain(actual.rules.keys()).collect();
        for chain in chains {
            let want = self.rules.get(chain).unwrap_or(&none);
            let have = actual.rules.get(chain).unwrap_or(&none);
            if want == have {
                continue;
            }
            let missing = multiset_minus(want, have);
            let extra = multiset_minus(have, want);
            for rule in &missing {
                out.push(format!("chain {chain} lacks rule {rule}"));
            }
            for rule in &extra {
                out.push(format!("chain {chain} has unexpected rule {rule}"));
            }
            if missing.is_empty() && extra.is_empty() {
                out.push(format!("chain {chain} has its rules out of order"));
            }
        }
        out
    }
}

fn name_of(object: &Value) -> String {
    object
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// `object` as compact JSON without `keys`.
fn without(object: &Value, keys: &[&str]) -> String {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        for key in keys {
            map.remove(*key);
        }
    }
    object.to_string()
}

/// The items of `a` not matched one-for-one in `b`.
fn multiset_minus<'a>(a: &'a [String], b: &[String]) -> Vec<&'a String> {
    let mut left: Vec<&String> = b.iter().collect();
    a.iter()
        .filter(|item| match left.iter().position(|x| x == item) {
            Some(i) => {
                left.swap_remove(i);
                false
            }
            None => true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> con_config::Network {
        con_config::Network {
            outbound_filter: true,
            allowed_ports: vec![8443, 443, 443],
            allow_dns: true,
            dns_servers: None,
            allow_loopback: false,
        }
    }

    #[test]
    fn script_lists_uids_and_ports_once_and_never_root() {
        let uids = [
            ("a".to_owned(), 1001),
            ("root".to_owned(), 0),
            ("b".to_owned(), 1002),
        ];
        let resolvers = ["127.0.0.53".parse().unwrap(), "fd00::53".parse().unwrap()];
        let p = plan(&network(), &uids, "con", &resolvers);
        assert!(
            p.script.contains(
                "ip daddr { 127.0.0.53 } meta l4proto { tcp, udp } th dport 53 accept\n\t\tip6 daddr { fd00::53 } meta"
            ),
            "{}",
            p.script
        );
        assert!(
            !p.script.contains("\tmeta l4proto { tcp, udp } th dport 53"),
            "{}",
            p.script
        );
        assert!(
            p.script.contains("elements = { 1001, 1002 }\n"),
            "{}",
            p.script
        );
        assert!(
            p.script.contains("tcp dport { 443, 8443 } accept\n"),
            "{}",
            p.script
        );
        assert!(!p.script.contains("oif \"lo\""), "{}", p.script);
        assert!(p.script.starts_with("# con egress"));
    }

    #[test]
    fn filter_off_only_deletes() {
        let mut n = network();
        n.outbound_filter = false;
        let p = plan(&n, &[("a".to_owned(), 1001)], "con", &[]);
        assert!(p.script.contains("delete table inet con\n"));
        assert!(!p.script.contains('{'), "{}", p.script);
    }

    #[test]
    fn table_names_are_identifiers() {
        for ok in ["con", "t1_con", "C"] {
            assert!(check_table(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1con", "con;flush ruleset", "a-b", "a b"] {
            assert!(check_table(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn differences_name_what_changed() {
        let expected = Listing {
            present: true,
            chains: BTreeMap::from([("agents".to_owned(), "{}".to_owned())]),
            sets: BTreeMap::from([(
                "agent_uids".to_owned(),
                (
                    "{}".to_owned(),
                    BTreeSet::from(["1".to_owned(), "2".to_owned()]),
                ),
            )]),
            rules: BTreeMap::from([("agents".to_owned(), vec!["a".to_owned(), "b".to_owned()])]),
        };
        assert!(expected.differences(&expected, "t").is_empty());
        let mut actual = Listing {
            sets: BTreeMap::from([(
                "agent_uids".to_owned(),
                (
                    "{}".to_owned(),
                    BTreeSet::from(["2".to_owned(), "3".to_owned()]),
                ),
            )]),
            ..Listing::default()
        };
        actual.present = true;
        actual.chains = expected.chains.clone();
        actual.rules =
            BTreeMap::from([("agents".to_owned(), vec!["b".to_owned(), "a".to_owned()])]);
        assert_eq!(
            expected.differences(&actual, "t"),
            [
                "set agent_uids lacks 1",
                "set agent_uids has unexpected 3",
                "chain agents has its rules out of order"
            ]
        );
        actual.rules = BTreeMap::from([("agents".to_owned(), vec!["a".to_owned()])]);
        actual.sets = expected.sets.clone();
        assert_eq!(
            expected.differences(&actual, "t"),
            ["chain agents lacks rule b"]
        );
        assert_eq!(
            expected.differences(&Listing::default(), "t"),
            ["table inet t is missing"]
        );
        assert_eq!(
            Listing::default().differences(&expected, "t"),
            ["table inet t exists but should not"]
        );
    }
}
