//! `con bootstrap`, `con commission`, `con decommission` and `con policy
//! explain`, black-box: the real binary as root on a temp root, with real
//! Linux users and groups under unique prefixes (removed at the end, even
//! on failure), run inside a network namespace of its own so the egress
//! rules never touch the host's ruleset. What the kernel enforces is probed
//! as the agent's own uid.
//!
//! Needs root, `useradd`, `setpriv`, `visudo`, `nft`, `ip netns` and
//! `systemd-analyze`.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use con_event::payloads::AgentCondition;
use con_event::{BlobRef, Payload};

use con_test_support::{
    Daemon, Root, all_events, remove_accounts, unique_name, unique_prefix, workspace,
};

use crate::CON;

/// A temp root (holding a copy of `configs/default` as `profile/`), unique
/// user and group prefixes, and a network namespace; every account with
/// either prefix and the namespace are removed on drop.
struct Host {
    root: Root,
    user_prefix: String,
    group_prefix: String,
    netns: String,
}

impl Host {
    fn new() -> Self {
        let root = Root::new();
        // Unique names have a fixed width, so redacted policy text keeps
        // its alignment; the root's user prefix has a one-letter tag, so
        // this one too.
        let host = Self {
            user_prefix: root.user_prefix().to_owned(),
            group_prefix: unique_prefix("g"),
            netns: unique_name("con-pv"),
            root,
        };
        // A namespace of this name can only be a leftover of an
        // interrupted run.
        let _ = Command::new("ip")
            .args(["netns", "del", &host.netns])
            .output();
        let out = Command::new("ip")
            .args(["netns", "add", &host.netns])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        copy_dir(&workspace().join("configs/default"), &host.profile());
        host
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    fn profile(&self) -> PathBuf {
        self.path().join("profile")
    }

    fn config(&self) -> PathBuf {
        self.path().join("etc/con/con.toml")
    }

    fn user(&self, agent: &str) -> String {
        format!("{}{agent}", self.user_prefix)
    }

    fn agent_dir(&self, agent: &str) -> PathBuf {
        self.path().join("srv/con/agents").join(agent)
    }

    /// `con --root R --user-prefix P --group-prefix G <args>`, as root, in
    /// the test's network namespace, with a clean environment.
    fn con(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns, CON])
            .args([
                "--root",
                self.path().to_str().unwrap(),
                "--user-prefix",
                &self.user_prefix,
                "--group-prefix",
                &self.group_prefix,
            ])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.con(args);
        assert!(
            out.status.success(),
            "con {args:?}: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        text(&out.stdout)
    }

    fn bootstrap_profile(&self) {
        let profile = self.profile();
        self.ok(&["bootstrap", "--profile", profile.to_str().unwrap()]);
    }

    /// Lines of /etc/passwd and /etc/group naming one of our prefixes.
    fn accounts(&self) -> BTreeSet<String> {
        ["/etc/passwd", "/etc/group"]
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|l| l.starts_with(&self.user_prefix) || l.starts_with(&self.group_prefix))
            .collect()
    }

    /// `script` run by `sh` as the agent's uid, with its groups.
    fn as_agent(&self, agent: &str, script: &str) -> Output {
        let user = nix_user(&self.user(agent));
        Command::new("setpriv")
            .args([
                &format!("--reuid={}", user.0),
                &format!("--regid={}", user.1),
                "--init-groups",
                "--",
                "sh",
                "-c",
                script,
            ])
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap()
    }

    fn denied(&self, agent: &str, script: &str) {
        let out = self.as_agent(agent, script);
        assert!(
            !out.status.success(),
            "{agent} must not be able to: {script}"
        );
        assert!(
            text(&out.stderr).contains("ermission denied"),
            "{agent}: {script}: not refused by the kernel: {}",
            text(&out.stderr)
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        remove_accounts(&[&self.user_prefix, &self.group_prefix]);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

fn nix_user(name: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, name]).output().unwrap();
        assert!(
            out.status.success(),
            "id {flag} {name}: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// Every path under `dir` with its owner, mode and (for files) content.
fn tree(dir: &Path) -> Vec<(PathBuf, u32, u32, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = meta.is_file().then(|| std::fs::read(&path).unwrap());
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.push((path, meta.uid(), meta.mode(), content));
        }
    }
    out.sort();
    out
}

/// Supplementary group names of `user` (without its primary group).
fn groups_of(user: &str) -> BTreeSet<String> {
    let all = |flag: &str| {
        let out = Command::new("id").args([flag, user]).output().unwrap();
        text(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let primary = all("-gn");
    all("-Gn")
        .into_iter()
        .filter(|g| !primary.contains(g))
        .collect()
}

/// The `/etc/shadow` fields of `user`.
fn shadow(user: &str) -> Vec<String> {
    std::fs::read_to_string("/etc/shadow")
        .unwrap()
        .lines()
        .find(|l| l.split(':').next() == Some(user))
        .unwrap_or_else(|| panic!("{user} not in /etc/shadow"))
        .split(':')
        .map(str::to_owned)
        .collect()
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or_default()
}

#[test]
fn commission_then_decommission_a_worker() {
    let host = Host::new();
    host.bootstrap_profile();
    let original = std::fs::read(host.config()).unwrap();
    let mode_before = std::fs::metadata(host.config()).unwrap().mode();

    let out = host.ok(&["commission", "scribe", "--role", "sysadmin"]);
    assert!(last_line(&out).starts_with("commission scribe: "), "{out}");
    let user = host.user("scribe");
    let g = |name: &str| format!("{}{name}", host.group_prefix);
    assert_eq!(
        groups_of(&user),
        BTreeSet::from([g("agents"), g("workers")]),
        "a worker is in agents and workers only"
    );
    let (uid, _) = nix_user(&user);
    let dir = host.agent_dir("scribe");
    for sub in ["inbox", "outbox", "processed", "sessions"] {
        let meta = std::fs::metadata(dir.join(sub)).unwrap();
        assert!(meta.is_dir() && meta.uid() == uid, "{sub}");
    }
    assert!(dir.join("workspace/skills/commission-agent.md").is_file());
    let sudoers = host.path().join(format!("etc/sudoers.d/con-{user}"));
    assert!(
        sudoers.is_file(),
        "the sysadmin role's sudoers is installed"
    );
    let config = std::fs::read_to_string(host.config()).unwrap();
    assert!(
        config.ends_with(
            "\n[[agents]]\nname = \"scribe\"\ntier = \"worker\"\nroles = [\"sysadmin\"]\n"
        ),
        "{config}"
    );
    assert!(config.starts_with(std::str::from_utf8(&original).unwrap()));
    assert_eq!(
        std::fs::metadata(host.config()).unwrap().mode(),
        mode_before
    );
    // The installed config is now the source: a bootstrap has nothing to do.
    let again = host.ok(&["bootstrap"]);
    assert_eq!(
        last_line(&again),
        "bootstrap: 0 changes (host matches the plan)"
    );
    // The new worker can be tasked by operators (ACL granted).
    host.as_agent(
        "concierge",
        &format!("touch {}/inbox/t.task.tmp", dir.display()),
    );
    assert!(dir.join("inbox/t.task.tmp").exists());

    // A process of the agent that outlived its run (it left its process
    // group) must not outlive the agent.
    let mut leftover = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            "--regid=0",
            "--clear-groups",
            "--",
            "sleep",
            "300",
        ])
        .spawn()
        .unwrap();
    let out = host.ok(&["decommission", "scribe"]);
    assert!(
        last_line(&out).starts_with("decommission scribe: "),
        "{out}"
    );
    let status = leftover.wait().unwrap();
    assert!(
        !status.success(),
        "the leftover process was killed: {status:?}"
    );
    // The config is exactly what it was before the commission.
    assert_eq!(std::fs::read(host.config()).unwrap(), original);
    // The account is kept (uid reserved) but locked, expired, nologin,
    // and in none of con's groups.
    assert_eq!(nix_user(&user).0, uid);
    let fields = shadow(&user);
    assert!(fields[1].starts_with('!'), "password locked: {fields:?}");
    assert_eq!(fields[7], "1", "expired: {fields:?}");
    assert!(groups_of(&user).is_empty(), "{:?}", groups_of(&user));
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with(&format!("{user}:")) && l.ends_with(":/usr/sbin/nologin"))
    );
    // Units and sudoers are gone, the directory is root's alone.
    for unit in ["con-agent@scribe.service", "con-agent@scribe.path"] {
        assert!(
            !host.path().join("etc/systemd/system").join(unit).exists(),
            "{unit}"
        );
    }
    assert!(!sudoers.exists());
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, 0o700)
    );
    assert!(
        dir.join("workspace/skills/commission-agent.md").exists(),
        "kept for forensics"
    );
    // No ACL outside its own (closed) directory still names the old user:
    // its grants on the sysadmin directories are withdrawn by the re-apply.
    let acl = Command::new("getfacl")
        .args(["-R", "-p"])
        .arg(host.path().join("srv/con"))
        .output()
        .unwrap();
    let own = format!("# file: {}", dir.display());
    let listing = text(&acl.stdout);
    let naming: Vec<&str> = listing
        .split("\n\n")
        .filter(|block| !block.starts_with(&own) && block.contains(&user))
        .collect();
    assert!(naming.is_empty(), "{naming:#?}");
    // The kernel agrees: the old uid cannot get back in.
    host.denied("scribe", &format!("ls {}", dir.display()));
    host.denied("scribe", &format!("touch {}/workspace/x", dir.display()));
    let again = host.ok(&["bootstrap"]);
    assert_eq!(
        last_line(&again),
        "bootstrap: 0 changes (host matches the plan)"
    );

    // Unknown names are refused; a decommissioned name cannot be reused.
    let out = host.con(&["decommission", "scribe"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no agent named scribe"),
        "{}",
        text(&out.stderr)
    );
    let out = host.con(&["commission", "scribe"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
}

/// Standing policy is the officers' to write and everyone's to read;
/// artifacts are the officers' and operators' to leave and everyone's to
/// read. Checked as each agent's uid: the kernel says who may.
#[test]
fn officers_write_policy_operators_write_artifacts_and_everyone_reads() {
    let host = Host::new();
    host.bootstrap_profile();
    host.ok(&["commission", "scribe"]);
    let policy = host.path().join("srv/con/policy");
    let artifacts = host.path().join("srv/con/artifacts");
    let ok = |agent: &str, script: &str| {
        let out = host.as_agent(agent, script);
        assert!(
            out.status.success(),
            "{agent}: {script}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    ok(
        "strategist",
        &format!(
            "echo 'Answer within a day.' > {}/global.md",
            policy.display()
        ),
    );
    for reader in ["concierge", "sysadmin", "scribe"] {
        let read = ok(reader, &format!("cat {}/global.md", policy.display()));
        assert_eq!(read.trim(), "Answer within a day.", "{reader}");
    }
    host.denied(
        "concierge",
        &format!("touch {}/operators.md", policy.display()),
    );
    host.denied("scribe", &format!("touch {}/workers.md", policy.display()));
    host.denied(
        "scribe",
        &format!("echo overwritten > {}/global.md", policy.display()),
    );
    ok(
        "concierge",
        &format!("echo findings > {}/report.md", artifacts.display()),
    );
    ok(
        "strategist",
        &format!("echo brief > {}/brief.md", artifacts.display()),
    );
    ok("scribe", &format!("cat {}/report.md", artifacts.display()));
    host.denied("scribe", &format!("touch {}/mine.md", artifacts.display()));
    // Sticky: an operator cannot remove another's artifact.
    let out = host.as_agent(
        "sysadmin",
        &format!("rm -f {}/report.md", artifacts.display()),
    );
    assert!(
        !out.status.success() && text(&out.stderr).contains("Operation not permitted"),
        "{}",
        text(&out.stderr)
    );
}

/// The sysadmin manages contracts, but root's are root's: the shipped
/// library cannot be changed, removed or renamed by it (any of which would
/// silence a check), while its own files come and go. As its uid.
#[test]
fn the_sysadmin_cannot_remove_rename_or_change_root_s_contracts() {
    let host = Host::new();
    host.bootstrap_profile();
    let dir = host.path().join("srv/con/contracts");
    let shipped = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "yaml"))
        .expect("a shipped contract");
    let before = std::fs::read(&shipped).unwrap();
    let shipped = shipped.display();
    let dir = dir.display();
    for attack in [
        format!("rm -f {shipped}"),
        format!("mv {shipped} {dir}/moved.yaml"),
        format!("echo 'id: X' > {shipped}"),
        format!("echo 'id: X' >> {shipped}"),
    ] {
        let out = host.as_agent("sysadmin", &attack);
        assert!(
            !out.status.success()
                && (text(&out.stderr).contains("Operation not permitted")
                    || text(&out.stderr).contains("Permission denied")),
            "{attack}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(std::fs::read(shipped.to_string()).unwrap(), before);
    // Its own: added, changed and removed.
    let out = host.as_agent(
        "sysadmin",
        &format!("echo 'id: MINE' > {dir}/mine.yaml && mv {dir}/mine.yaml {dir}/mine2.yaml && rm {dir}/mine2.yaml"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn bad_names_and_roles_are_refused_before_anything_is_touched() {
    let host = Host::new();
    host.bootstrap_profile();
    let before = tree(host.path());
    let accounts = host.accounts();
    for (args, why) in [
        (vec!["commission", "../x"], "must match"),
        (vec!["commission", "a;b"], "must match"),
        (vec!["commission", "../../etc/passwd"], "must match"),
        (vec!["commission", "outer"], "reserved"),
        (vec!["commission", "ok", "--tier", "root"], "unknown tier"),
        (vec!["commission", "ok", "--role", "../sysadmin"], "role"),
        (vec!["commission", "ok", "--role", "nope"], "no such role"),
        (vec!["commission", "sysadmin"], "already exists"),
        (vec!["decommission", "../x"], "must match"),
        (vec!["decommission", "a;b"], "must match"),
    ] {
        let out = host.con(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(
            stderr.starts_with("con: error: ") && stderr.contains(why),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert!(
        tree(host.path()) == before,
        "nothing under the root changed"
    );
    assert_eq!(host.accounts(), accounts, "no account was created");
}

#[test]
fn bootstrap_with_an_invalid_agent_name_creates_nothing() {
    let host = Host::new();
    let config = host.config();
    let text_ok = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_ok + "\n[[agents]]\nname = \"../evil\"\ntier = \"worker\"\n",
    )
    .unwrap();
    let before = tree(host.path());
    for args in [vec!["bootstrap"], vec!["bootstrap", "--dry-run"]] {
        let out = host.con(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("../evil") && stderr.contains("name"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
    assert!(tree(host.path()) == before);
    assert!(host.accounts().is_empty());
}

/// The policy text with this test's root, prefixes and table name replaced
/// by the production spellings.
fn redact(host: &Host, s: &str) -> String {
    let table = format!("{}con", host.group_prefix).replace('-', "_");
    // The resolvers come from this machine's /etc/resolv.conf.
    let lines: Vec<String> = s
        .lines()
        .map(|line| {
            match (
                line.find(") to "),
                line.find(" only (from /etc/resolv.conf)"),
            ) {
                (Some(start), Some(end)) if line.contains("DNS") && start < end => {
                    format!("{}) to <host resolvers>{}", &line[..start], &line[end..])
                }
                _ => line.to_owned(),
            }
        })
        .collect();
    (lines.join("\n") + if s.ends_with('\n') { "\n" } else { "" })
        .replace(&table, "con")
        .replace(&host.user_prefix, "a-")
        .replace(&host.group_prefix, "")
}

#[test]
fn policy_explain_sysadmin() {
    let host = Host::new();
    host.bootstrap_profile();
    host.ok(&["commission", "scribe"]);
    let contracts = host.path().join("srv/con/contracts");
    for (file, body) in [
        (
            "CON-SYS-001.yaml",
            "id: CON-SYS-001\ndescription: disk\nscope: system\n",
        ),
        (
            "sysadmin.yml",
            "id: \"CON-AGENT-007\"\nscope: agent:sysadmin # the host operator\n",
        ),
        (
            "concierge.yaml",
            "id: CON-AGENT-001\nscope: agent:concierge\n",
        ),
        ("notes.txt", "id: not-a-contract\nscope: system\n"),
    ] {
        std::fs::write(contracts.join(file), body).unwrap();
    }
    let out = host.ok(&["policy", "explain", "sysadmin"]);
    insta::assert_snapshot!(redact(&host, &out));

    let json: serde_json::Value =
        serde_json::from_str(&host.ok(&["policy", "explain", "sysadmin", "--json"])).unwrap();
    assert_eq!(json["agent"], "sysadmin");
    assert_eq!(json["inboxes"].as_array().unwrap().len(), 4);
    // The test's three files, one of them over a shipped one's name.
    let shipped = con_provision::shipped::CONTRACTS
        .iter()
        .filter(|(p, _, _)| p.ends_with(".yaml"))
        .count();
    assert_eq!(json["contracts"]["installed"], shipped + 2);
    assert!(
        json["units"][0]["exposure"]["score"]["score"].is_string(),
        "{json}"
    );

    // A worker tasks no one and has no sudo; the contracts dir is empty
    // for it only in the sense that none is scoped to it but the system one.
    let out = host.ok(&["policy", "explain", "scribe"]);
    assert!(out.contains("inboxes it can write:\n  scribe "), "{out}");
    assert!(out.contains("sudo: none"), "{out}");
    assert!(
        out.contains("  CON-SYS-001  scope system") && !out.contains("CON-AGENT-007"),
        "{out}"
    );

    let out = host.con(&["policy", "explain", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr).lines().count(), 1);
}

#[test]
fn provision_applied_is_recorded_when_the_daemon_runs() {
    let host = Host::new();
    // Before the daemon exists: applied, and said not to be recorded.
    let profile = host.profile();
    let out = host.con(&["bootstrap", "--profile", profile.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("daemon is not running")
            && text(&out.stderr).lines().count() == 1,
        "{}",
        text(&out.stderr)
    );
    let _daemon = Daemon::start_with(CON, &host.root, &["--supervisor", "systemd"], &[]);

    let commission = host.ok(&["commission", "scribe"]);
    let decommission = host.ok(&["decommission", "scribe"]);
    let bootstrap = host.ok(&["bootstrap"]);

    let events = all_events(&host.root.socket());
    let applied: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::ProvisionApplied(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    let commands: Vec<&str> = applied.iter().map(|p| p.command.as_str()).collect();
    assert_eq!(
        commands,
        ["commission scribe", "decommission scribe", "bootstrap"]
    );
    for (p, out) in applied.iter().zip([&commission, &decommission, &bootstrap]) {
        // The steps blob is exactly the printed step lines.
        let lines: Vec<&str> = out.lines().collect();
        let steps = lines[..lines.len() - 1].join("\n");
        assert_eq!(p.steps, BlobRef::of(steps.as_bytes()), "{}", p.command);
        let done = lines
            .iter()
            .filter(|l| {
                l.starts_with('+')
                    || l.starts_with('~')
                    || l.starts_with("- agent")
                    || l.starts_with("- unit")
                    || l.starts_with("- sudoers")
            })
            .count();
        assert_eq!(p.changes as usize, done, "{}: {out}", p.command);
        assert!(p.failed.is_empty() && p.disabled_agents.is_empty());
    }
    assert_eq!(applied[2].changes, 0);
    let state = events
        .iter()
        .find_map(|e| match &e.payload {
            Payload::AgentState(s) => Some(s.clone()),
            _ => None,
        })
        .expect("agent.state recorded");
    assert_eq!(state.agent, "scribe");
    assert_eq!(state.condition, AgentCondition::Decommissioned);
}

#[test]
fn the_shipped_contracts_pass_on_a_freshly_bootstrapped_root() {
    let host = Host::new();
    host.bootstrap_profile();
    let dir = host.path().join("srv/con/contracts");
    let meta = std::fs::metadata(dir.join("CON-AGENT-002.yaml")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644));
    // Test machines run many tests and builds at once: load is not what
    // this test is about, so its ceiling is out of reach (the daemon hands
    // the configured value to the check).
    let config = host.config();
    let text_before = std::fs::read_to_string(&config).unwrap();
    let edited = text_before.replace("max_load_per_cpu = 4.0", "max_load_per_cpu = 10000.0");
    assert_ne!(edited, text_before, "the profile's max_load_per_cpu moved");
    std::fs::write(&config, edited).unwrap();
    let _daemon = Daemon::start_with(CON, &host.root, &["--supervisor", "systemd"], &[]);
    let out = host.con(&["contracts", "check"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    // Every shipped contract ran, and none was skipped or failed.
    for id in [
        "CON-SYS-001",
        "CON-SYS-002",
        "CON-SYS-003",
        "CON-SYS-004",
        "CON-SYS-006",
        "CON-AGENT-001",
        "CON-AGENT-002",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("{id} missing: {stdout}"));
        assert!(line.contains(" pass "), "{line}");
    }

    // The preventive registry: not run, listed with what enforces it.
    assert!(
        !stdout.contains("CON-PREV-"),
        "preventive contracts have nothing to run"
    );
    let list = host.con(&["contracts", "list", "--json"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let registry: Vec<(String, String)> = list["preventive"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(p["applies_to"].is_null(), "{p}");
            assert!(!p["description"].as_str().unwrap().is_empty(), "{p}");
            (
                p["contract"].as_str().unwrap().to_owned(),
                p["mechanism"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("CON-PREV-001", "nftables"),
        ("CON-PREV-002", "acl"),
        ("CON-PREV-003", "file-modes"),
        ("CON-PREV-004", "sudoers"),
        ("CON-PREV-005", "systemd"),
        ("CON-PREV-006", "file-modes"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(registry, want);
    let listed = text(&host.con(&["contracts", "list"]).stdout);
    assert!(
        listed.contains("preventive (enforced by the OS, registered here):\n  CON-PREV-001   nftables   for every agent  "),
        "{listed}"
    );

    // Drift is caught: an AGENTS.md made writable fails its contract.
    let md = host
        .path()
        .join(format!("home/{}/AGENTS.md", host.user("concierge")));
    std::fs::set_permissions(&md, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = host.con(&["contracts", "check", "CON-AGENT-002"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("0 644"), "{}", text(&out.stdout));
}

/// Every agent's AGENTS.md names the agents that exist: a commission adds
/// the new one to the others' rosters and a decommission takes it out, as
/// part of their own apply (no bootstrap by hand), and the rewritten files
/// are among the steps `provision.applied` records.
#[test]
fn the_roster_follows_commission_and_decommission() {
    let host = Host::new();
    host.bootstrap_profile();
    let _daemon = Daemon::start_with(CON, &host.root, &["--supervisor", "systemd"], &[]);
    let concierge_md = host
        .path()
        .join("home")
        .join(host.user("concierge"))
        .join("AGENTS.md");
    let read = |path: &Path| {
        // As the concierge itself: what its runs read.
        let out = host.as_agent("concierge", &format!("cat {}", path.display()));
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let before = read(&concierge_md);
    assert!(before.contains("## Who is here"), "{before}");
    assert!(before.contains("- `strategist`: officer"), "{before}");
    assert!(!before.contains("`researcher`"), "{before}");

    let commission = host.ok(&["commission", "researcher"]);
    let after = read(&concierge_md);
    assert!(
        after.contains("- `researcher`: worker (does delegated work); no role"),
        "{after}"
    );
    let rewritten = format!("home/{}/AGENTS.md", host.user("concierge"));
    assert!(
        commission.lines().any(|l| l.contains(&rewritten)),
        "{commission}"
    );
    // The new agent knows the others, and itself.
    let own = host
        .path()
        .join("home")
        .join(host.user("researcher"))
        .join("AGENTS.md");
    let own = text(&std::fs::read(own).unwrap());
    assert!(
        own.contains("- `researcher` (you): worker") && own.contains("- `concierge`: operator")
    );

    let decommission = host.ok(&["decommission", "researcher"]);
    let gone = read(&concierge_md);
    assert!(!gone.contains("`researcher`"), "{gone}");
    assert_eq!(gone, before);
    assert!(
        decommission.lines().any(|l| l.contains(&rewritten)),
        "{decommission}"
    );

    // Both rewrites are in the record: the steps of each provision.applied.
    let socket = host.root.socket();
    let mut client = con_protocol::Client::connect(&socket).unwrap();
    let recorded: Vec<(String, String)> = all_events(&socket)
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::ProvisionApplied(p) => Some(p.clone()),
            _ => None,
        })
        .map(|p| (p.command, text(&client.blob(p.steps.digest).unwrap())))
        .collect();
    let commands: Vec<&str> = recorded.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        commands,
        ["commission researcher", "decommission researcher"]
    );
    for (command, steps) in &recorded {
        assert!(
            steps.lines().any(|l| l.contains(&rewritten)),
            "{command}: {steps}"
        );
    }
}

/// The daily ledger files are the fleet's accounting: the officers (and
/// root) may read them, workers and operators the config does not name may
/// not even list the directory.
#[test]
fn the_ledger_directory_is_for_those_who_see_the_fleet() {
    let host = Host::new();
    host.bootstrap_profile();
    host.ok(&["commission", "scribe"]);
    let ledger = host.path().join("srv/con/ledger");
    let meta = std::fs::metadata(&ledger).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o750);
    assert_eq!(meta.uid(), 0);
    let out = host.as_agent("strategist", &format!("ls {}", ledger.display()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    host.denied("scribe", &format!("ls {}", ledger.display()));
    host.denied("concierge", &format!("ls {}", ledger.display()));
}

/// The original agent-runner's default profile, as shipped (read from
/// `../shared/seed`; skipped with a message where that is absent).
fn seed_default_profile() -> Option<PathBuf> {
    let dir = workspace().join("../shared/seed/agent-runner/configs/default");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: the original's profile is not at {} (a clone without ../shared)",
            dir.display()
        );
        None
    }
}

/// `con bootstrap --profile` of the original's default profile provisions
/// a test root: its AGENTS.md layers are assembled, and its ready-made
/// sudoers drop-in is checked by visudo and reported, not installed. A
/// drop-in visudo rejects stops the bootstrap before anything is touched.
#[test]
fn the_originals_default_profile_bootstraps_a_test_root() {
    let Some(seed) = seed_default_profile() else {
        return;
    };
    let host = Host::new();
    std::fs::remove_dir_all(host.profile()).unwrap();
    copy_dir(&seed, &host.profile());
    let out = host.con(&["bootstrap", "--profile", host.profile().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "sudoers.d/con-sysadmin: valid sudoers (visudo -c), accepted and not installed"
        ),
        "{stderr}"
    );
    let installed: Vec<_> = std::fs::read_dir(host.path().join("etc/sudoers.d"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(installed.is_empty(), "sudoers installed: {installed:?}");

    // Each layer of the original's instructions is in the agent's AGENTS.md.
    let first_line = |rel: &str| -> String {
        std::fs::read_to_string(seed.join(rel))
            .unwrap()
            .lines()
            .map(str::trim)
            .find(|l| l.len() > 20 && !l.starts_with('#'))
            .unwrap()
            .to_owned()
    };
    let md = std::fs::read_to_string(
        host.path()
            .join(format!("home/{}/AGENTS.md", host.user("sysadmin"))),
    )
    .unwrap();
    for layer in ["base/AGENTS.md", "agents/sysadmin/AGENTS.md"] {
        let line = first_line(layer);
        assert!(md.contains(&line), "{layer}: {line:?} not in:\n{md}");
    }
    // A second run changes nothing.
    let again = host.ok(&["bootstrap", "--profile", host.profile().to_str().unwrap()]);
    assert!(again.contains("0 changes"), "{again}");

    // A broken drop-in: refused with the file named, nothing created.
    let broken = Host::new();
    std::fs::remove_dir_all(broken.profile()).unwrap();
    copy_dir(&seed, &broken.profile());
    let drop_in = broken.profile().join("sudoers.d/con-sysadmin");
    std::fs::set_permissions(
        &drop_in,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(&drop_in, "a-sysadmin ALL=(root NOPASSWD /bin/true\n").unwrap();
    let out = broken.con(&["bootstrap", "--profile", broken.profile().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("visudo rejected") && err.contains("sudoers.d/con-sysadmin"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(broken.accounts().is_empty(), "accounts were created");
}

/// `con bootstrap` while an agent is quarantined leaves its inbox closed to
/// the other agents (the plan's write grants on it are withheld, from the
/// daemon's state or, with no daemon, from the log itself); the resume
/// puts back exactly what the quarantine removed.
#[test]
fn bootstrap_keeps_a_quarantined_inbox_closed_until_the_resume() {
    let host = Host::new();
    host.bootstrap_profile();
    let inbox = host.agent_dir("sysadmin").join("inbox");
    let getfacl = || {
        let out = Command::new("getfacl")
            .args(["-cp"])
            .arg(&inbox)
            .output()
            .unwrap();
        assert!(out.status.success());
        text(&out.stdout)
    };
    let write = |name: &str| format!("echo hi > {}/{name}.task", inbox.display());
    let before = getfacl();
    let out = host.as_agent("concierge", &write("before"));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let daemon = Daemon::start_with(CON, &host.root, &["--supervisor", "systemd"], &[]);
    host.ok(&["agent", "quarantine", "sysadmin"]);
    host.denied("concierge", &write("quarantined"));

    // Through the daemon's state.
    let out = host.ok(&["bootstrap"]);
    assert!(
        out.contains("write grant(s) withheld while sysadmin is quarantined"),
        "{out}"
    );
    host.denied("concierge", &write("after-bootstrap"));
    let check = host.con(&["bootstrap", "--check"]);
    assert!(check.status.success(), "no drift: {}", text(&check.stdout));

    // With no daemon, from the log.
    drop(daemon);
    host.ok(&["bootstrap"]);
    host.denied("concierge", &write("after-offline-bootstrap"));
    assert!(!inbox.join("after-offline-bootstrap.task").exists());

    let _daemon = Daemon::start_with(CON, &host.root, &["--supervisor", "systemd"], &[]);
    host.ok(&["agent", "resume", "sysadmin"]);
    assert_eq!(
        getfacl(),
        before,
        "the resume restores exactly what was removed"
    );
    let out = host.as_agent("concierge", &write("resumed"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // And a bootstrap now changes nothing on the inbox.
    let out = host.ok(&["bootstrap"]);
    assert!(!out.contains("withheld"), "{out}");
    assert_eq!(getfacl(), before);
}
