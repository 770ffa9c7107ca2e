//! `con bootstrap` against the real kernel: real users and groups (unique
//! prefixes, removed at the end), a temp root, real ACLs and sudoers. The
//! security properties are probed as the agent's own Linux user.
//!
//! Needs root, `useradd`, `setpriv`, `visudo`/`sudo` and `ip netns`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use con_layout::{ConGroup, Layout};
use con_provision::{ApplyOptions, PlanInput, Profile, Report, StepStatus};
use con_test_support::{remove_accounts, unique_name, unique_prefix, workspace};

const AGENTS: [&str; 4] = ["concierge", "sysadmin", "strategist", "scribe"];

/// A worker, so the tests can probe the least-privileged tier.
const WORKER: &str = "\n[[agents]]\nname = \"scribe\"\ntier = \"worker\"\nmode = \"on-demand\"\n";

/// A temp root, unique user and group prefixes, a network namespace for the
/// egress rules, and cleanup of every account and file created outside the
/// root (even when the test fails).
struct Host {
    dir: tempfile::TempDir,
    layout: Layout,
    /// Its group prefix (the layout's is private).
    group_prefix: String,
    netns: String,
    /// A copy of configs/default plus the worker, editable per test.
    profile: PathBuf,
    outside: Vec<PathBuf>,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("con-prov-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let group_prefix = unique_prefix("g");
        let layout = Layout::new(dir.path(), &unique_prefix("u"), &group_prefix).unwrap();
        let netns = unique_name("con-n");
        // One of this name can only be a leftover of an interrupted run.
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &netns])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let profile = dir.path().join("profile-src");
        copy_dir(&workspace().join("configs/default"), &profile);
        let toml = profile.join("con.toml");
        let text = std::fs::read_to_string(&toml).unwrap() + WORKER;
        std::fs::write(&toml, text).unwrap();
        Self {
            dir,
            layout,
            group_prefix,
            netns,
            profile,
            outside: Vec::new(),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn input(&self) -> PlanInput {
        let profile = Profile::read(&self.profile).unwrap();
        let text = std::str::from_utf8(profile.get("con.toml").unwrap()).unwrap();
        PlanInput {
            config: con_config::parse(text, &self.profile.join("con.toml"), &BTreeMap::new())
                .unwrap(),
            profile,
            install_profile: true,
        }
    }

    fn plan(&self) -> con_provision::Plan {
        con_provision::plan(&self.input(), &self.layout).unwrap()
    }

    fn bootstrap(&self) -> Report {
        let options = ApplyOptions {
            dry_run: false,
            netns: Some(self.netns.clone()),
        };
        con_provision::apply(&self.plan(), &self.layout, &options)
    }

    fn check(&self) -> Vec<String> {
        con_provision::check(&self.plan(), &self.layout, Some(&self.netns))
            .into_iter()
            .map(|d| d.change)
            .collect()
    }

    fn user(&self, agent: &str) -> String {
        self.layout.user(agent)
    }

    fn agent_dir(&self, agent: &str) -> PathBuf {
        self.layout.agent_dir(agent)
    }

    /// `script` run by `sh` as the agent's user, with its groups.
    fn as_agent(&self, agent: &str, script: &str) -> Output {
        let user = nix::unistd::User::from_name(&self.user(agent))
            .unwrap()
            .unwrap();
        Command::new("setpriv")
            .args([
                &format!("--reuid={}", user.uid),
                &format!("--regid={}", user.gid),
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

    fn allowed(&self, agent: &str, script: &str) {
        let out = self.as_agent(agent, script);
        assert!(
            out.status.success(),
            "{agent} should be able to: {script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn denied_by_sudo(&self, agent: &str, script: &str) {
        let out = self.as_agent(agent, script);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{agent} must not be able to: {script}"
        );
        assert!(
            stderr.contains("a password is required") || stderr.contains("not allowed"),
            "{agent}: {script}: not refused by sudo: {stderr}"
        );
    }

    fn denied(&self, agent: &str, script: &str) {
        let out = self.as_agent(agent, script);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{agent} must not be able to: {script}"
        );
        assert!(
            stderr.contains("ermission denied") || stderr.contains("Operation not permitted"),
            "{agent}: {script}: not refused by the kernel: {stderr}"
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for path in &self.outside {
            let _ = std::fs::remove_file(path);
        }
        remove_accounts(&[self.layout.user_prefix(), &self.group_prefix]);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
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

fn assert_clean(report: &Report) {
    let failed: Vec<_> = report.failed();
    assert!(failed.is_empty(), "failed steps: {failed:#?}");
}

#[test]
fn bootstrap_twice_changes_nothing_the_second_time() {
    let host = Host::new();
    let first = host.bootstrap();
    assert_clean(&first);
    assert!(first.changes() > 50, "{:#?}", first.steps);
    let second = host.bootstrap();
    assert_clean(&second);
    assert_eq!(second.changes(), 0, "{:#?}", second.steps);
    assert_eq!(host.check(), Vec::<String>::new());

    // Spot checks of what the kernel now says.
    let meta = std::fs::metadata(host.layout.home("scribe").join("AGENTS.md")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o444);
    let meta = std::fs::metadata(host.layout.env_file()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    let user = nix::unistd::User::from_name(&host.user("scribe"))
        .unwrap()
        .unwrap();
    assert_eq!(user.shell, Path::new("/usr/sbin/nologin"));
    // The secrets file's content is never touched.
    std::fs::write(host.layout.env_file(), "CON_OPENROUTER_API_KEY=secret\n").unwrap();
    assert_clean(&host.bootstrap());
    assert_eq!(
        std::fs::read_to_string(host.layout.env_file()).unwrap(),
        "CON_OPENROUTER_API_KEY=secret\n"
    );
}

#[test]
fn agents_are_confined_by_the_kernel() {
    let host = Host::new();
    assert_clean(&host.bootstrap());
    let sysadmin = host.agent_dir("sysadmin");
    let scribe_home = host.layout.home("scribe");
    std::fs::write(host.layout.env_file(), "KEY=secret\n").unwrap();
    std::fs::write(sysadmin.join("workspace/notes.txt"), "private\n").unwrap();

    // A worker tasks no one, and reads no one else's files.
    host.denied(
        "scribe",
        &format!("echo x > {}/inbox/w.task", sysadmin.display()),
    );
    host.denied("scribe", &format!("ls {}/workspace", sysadmin.display()));
    host.denied(
        "scribe",
        &format!("cat {}/workspace/notes.txt", sysadmin.display()),
    );
    host.denied(
        "scribe",
        &format!("ls {}", host.layout.home("sysadmin").display()),
    );
    host.denied(
        "scribe",
        &format!("cat {}/AGENTS.md", host.layout.home("sysadmin").display()),
    );
    host.denied(
        "scribe",
        &format!("cat {}", host.layout.env_file().display()),
    );

    // It reads its own instructions but cannot change or replace them.
    let own = scribe_home.join("AGENTS.md");
    let ws = host.agent_dir("scribe").join("workspace");
    host.allowed("scribe", &format!("cat {} >/dev/null", own.display()));
    host.allowed("scribe", &format!("echo mine > {}/evil.md", ws.display()));
    host.denied("scribe", &format!("echo x >> {}", own.display()));
    host.denied(
        "scribe",
        &format!("mv -f {}/evil.md {}", ws.display(), own.display()),
    );
    host.denied("scribe", &format!("chmod 666 {}", own.display()));
    host.denied("scribe", &format!("rm -f {}", own.display()));
    host.denied(
        "scribe",
        &format!("echo x > {}/other.md", scribe_home.display()),
    );

    // Nor its skills, nor the directories holding them (sysadmin has skills).
    let skills = sysadmin.join("workspace/skills");
    let skill = skills.join("status-and-logs.md");
    host.allowed("sysadmin", &format!("cat {} >/dev/null", skill.display()));
    host.allowed(
        "sysadmin",
        &format!(
            "echo fake > {}/fake.md",
            sysadmin.join("workspace").display()
        ),
    );
    host.denied("sysadmin", &format!("echo x >> {}", skill.display()));
    host.denied(
        "sysadmin",
        &format!(
            "mv -f {}/workspace/fake.md {}",
            sysadmin.display(),
            skill.display()
        ),
    );
    host.denied("sysadmin", &format!("chmod 666 {}", skill.display()));
    host.denied("sysadmin", &format!("echo x > {}/new.md", skills.display()));
    host.denied(
        "sysadmin",
        &format!(
            "mv {} {}/workspace/old-skills",
            skills.display(),
            sysadmin.display()
        ),
    );
    host.denied(
        "sysadmin",
        &format!(
            "mv {}/workspace {}/old-workspace",
            sysadmin.display(),
            sysadmin.display()
        ),
    );

    // An operator tasks another agent, which can then read and take the task.
    let task = sysadmin.join("inbox/from-concierge.task");
    host.allowed(
        "concierge",
        &format!("echo 'restart x' > {}", task.display()),
    );
    host.allowed("sysadmin", &format!("cat {}", task.display()));
    host.allowed(
        "sysadmin",
        &format!("mv {} {}/processed/", task.display(), sysadmin.display()),
    );
    // …but still cannot look around in its directory.
    host.denied("concierge", &format!("ls {}/workspace", sysadmin.display()));
}

#[test]
fn drift_is_reported_and_repaired() {
    let host = Host::new();
    assert_clean(&host.bootstrap());
    let workspace = host.agent_dir("scribe").join("workspace");
    std::fs::set_permissions(&workspace, std::fs::Permissions::from_mode(0o755)).unwrap();
    let inbox = host.agent_dir("sysadmin").join("inbox");
    let concierge = nix::unistd::User::from_name(&host.user("concierge"))
        .unwrap()
        .unwrap();
    let mut acl = posix_acl::PosixACL::read_acl(&inbox).unwrap();
    acl.remove(posix_acl::Qualifier::User(concierge.uid.as_raw()))
        .unwrap();
    acl.write_acl(&inbox).unwrap();
    let unit = host.layout.unit_file("con-agent@scribe.path");
    std::fs::remove_file(&unit).unwrap();
    let agents_md = host.layout.home("scribe").join("AGENTS.md");
    std::fs::set_permissions(&agents_md, std::fs::Permissions::from_mode(0o644)).unwrap();
    let table = host.layout.egress_table();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.netns,
            "nft",
            "delete",
            "table",
            "inet",
            &table,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let drift = host.check();
    let has = |needle: &str| drift.iter().any(|d| d.contains(needle));
    assert!(
        has(&format!("~ mode {} 0755 -> 1770", workspace.display())),
        "{drift:#?}"
    );
    assert!(
        has(&format!(
            "~ acl {} +u:{}:rwx",
            inbox.display(),
            host.user("concierge")
        )),
        "{drift:#?}"
    );
    assert!(has(&format!("+ unit {}", unit.display())), "{drift:#?}");
    assert!(
        has(&format!("~ mode {} 0644 -> 0444", agents_md.display())),
        "{drift:#?}"
    );
    assert!(has(&format!("~ egress table {table}")), "{drift:#?}");
    assert_eq!(drift.len(), 5, "{drift:#?}");

    let repair = host.bootstrap();
    assert_clean(&repair);
    assert_eq!(repair.changes(), 5, "{:#?}", repair.steps);
    assert_eq!(host.check(), Vec::<String>::new());
}

#[test]
fn a_broken_sudoers_template_is_refused_and_the_installed_file_kept() {
    let host = Host::new();
    assert_clean(&host.bootstrap());
    let installed = host.layout.sudoers_file("sysadmin");
    let before = std::fs::read(&installed).unwrap();

    let template = host.profile.join("sudoers/sysadmin");
    let mut text = std::fs::read_to_string(&template).unwrap();
    text.push_str("a-sysadmin ALL=(root NOPASSWD: /bin/true x\n");
    std::fs::write(&template, text).unwrap();
    let report = host.bootstrap();

    let failed = report.failed();
    assert_eq!(failed.len(), 1 + 2, "{failed:#?}"); // the sudoers file, then both sysadmin units
    let StepStatus::Failed(why) = &failed[0].status else {
        unreachable!()
    };
    assert!(failed[0].change.starts_with("~ sudoers "), "{failed:#?}");
    assert!(
        why.contains("visudo rejected") && why.contains("syntax error"),
        "{why}"
    );
    assert!(
        failed[1..]
            .iter()
            .all(|s| s.change.contains("con-agent@sysadmin"))
    );
    assert_eq!(report.withheld, vec!["sysadmin".to_owned()]);
    assert_eq!(std::fs::read(&installed).unwrap(), before);
    // The rest of the run still happened and was reported.
    assert!(
        report.steps.iter().any(|s| s.status == StepStatus::Done
            && s.change.ends_with("etc/con/sudoers/sysadmin content")),
        "{:#?}",
        report.steps
    );
    // No temp file is left where sudo would read it.
    let leftovers: Vec<_> = std::fs::read_dir(host.layout.sudoers_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn sudo_grants_exactly_the_profiles_commands() {
    let mut host = Host::new();
    host.layout = host
        .layout
        .clone()
        .with_sudoers_dir(Path::new("/etc/sudoers.d"))
        .unwrap();
    let installed = host.layout.sudoers_file("sysadmin");
    host.outside.push(installed.clone());
    assert_clean(&host.bootstrap());
    assert!(
        installed
            .to_str()
            .unwrap()
            .starts_with("/etc/sudoers.d/con-u")
    );
    let mode = std::fs::metadata(&installed).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o440);

    let template = std::fs::read_to_string(host.profile.join("sudoers/sysadmin")).unwrap();
    let mut want: Vec<String> = template
        .lines()
        .filter(|l| l.starts_with("a-sysadmin "))
        .map(|l| l.split_once("ALL=").unwrap().1.to_owned())
        .collect();
    want.sort();

    let listed = |user: &str| -> Vec<String> {
        let out = Command::new("sudo")
            .args(["-l", "-U", user])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut rules: Vec<String> = text
            .lines()
            .skip_while(|l| !l.contains("may run the following commands"))
            .skip(1)
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        rules.sort();
        rules
    };
    assert_eq!(listed(&host.user("sysadmin")), want);
    // Agents without a sudoers template get nothing.
    assert_eq!(listed(&host.user("concierge")), Vec::<String>::new());

    // As the agents themselves: the sysadmin may run a whitelisted command;
    // the worker may run nothing through sudo, whitelisted or not.
    let journal = "sudo -n /usr/bin/journalctl --no-pager -n 0";
    host.allowed("sysadmin", journal);
    for attempt in [journal, "sudo -n true", "sudo -n /bin/cat /etc/shadow"] {
        host.denied_by_sudo("scribe", attempt);
    }
    host.denied_by_sudo("sysadmin", "sudo -n /bin/cat /etc/shadow");
}

#[test]
fn a_config_with_a_bad_agent_name_touches_nothing() {
    let host = Host::new();
    let before: Vec<_> = std::fs::read_dir(host.root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for bad in ["../x", "a;rm"] {
        let toml = host.profile.join("con.toml");
        let text = format!(
            "{}\n[[agents]]\nname = {bad:?}\ntier = \"worker\"\n",
            std::fs::read_to_string(&toml).unwrap()
        );
        // What `con bootstrap` does first: parse, then plan. Parsing refuses.
        let err = con_config::parse(&text, &toml, &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("name"), "{err}");
    }
    let after: Vec<_> = std::fs::read_dir(host.root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after);
    for agent in AGENTS {
        assert!(
            nix::unistd::User::from_name(&host.user(agent))
                .unwrap()
                .is_none()
        );
    }
    assert!(
        nix::unistd::Group::from_name(&host.layout.group(ConGroup::Agents))
            .unwrap()
            .is_none()
    );
}
