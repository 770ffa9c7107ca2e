//! Linux users and groups made for one test, and names no other test gets.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Linux's limit on a user or group name: useradd refuses a longer one.
const MAX_NAME_LEN: usize = 32;

/// Base-36 digits of the process id in a unique name: enough for any pid
/// (pid_max is at most 2^22), and fixed so that every name of a tag has the
/// same width, which keeps aligned text that shows one (snapshots) stable.
const PID_DIGITS: u32 = 5;

/// Base-36 digits of the per-process counter in a unique name.
const COUNTER_DIGITS: u32 = 2;

/// A name no other test gets: `tag`, then the process id and a counter of
/// this process, in base 36 and of fixed width (7 characters after the
/// tag). Unique per process and per call, so tests running in parallel in
/// one binary, or in several, never share one; and a name that already
/// exists can only be a leftover of a process that is gone.
///
/// `tag` starts with a lowercase letter and is made of `[a-z0-9_-]`, so the
/// name is valid for a user, a group, a network namespace or an nft table.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(
        n < 36u32.pow(COUNTER_DIGITS),
        "more than {} unique names in one test process",
        36u32.pow(COUNTER_DIGITS)
    );
    let valid = tag.starts_with(|c: char| c.is_ascii_lowercase())
        && tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    assert!(valid, "tag {tag:?}: a lowercase letter, then [a-z0-9_-]");
    let name = format!(
        "{tag}{}{}",
        base36(std::process::id(), PID_DIGITS),
        base36(n, COUNTER_DIGITS)
    );
    assert!(
        name.len() <= MAX_NAME_LEN,
        "{name}: longer than {MAX_NAME_LEN}"
    );
    name
}

/// A user or group prefix no other test gets: [`unique_name`] and a dash.
/// Refused here, not later by con, if con would refuse it (a `tag` of more
/// than 4 characters is too long).
pub fn unique_prefix(tag: &str) -> String {
    let prefix = format!("{}-", unique_name(tag));
    assert!(
        con_layout::Layout::new(Path::new("/"), &prefix, &prefix).is_ok(),
        "{prefix}: not a prefix con accepts"
    );
    prefix
}

fn base36(mut n: u32, digits: u32) -> String {
    let mut out = vec![b'0'; digits as usize];
    for slot in out.iter_mut().rev() {
        *slot = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
    }
    assert_eq!(n, 0, "does not fit in {digits} base-36 digits");
    String::from_utf8_lossy(&out).into_owned()
}

/// A shadow-utils tool that failed.
#[derive(Debug)]
struct Failed {
    /// Its exit code (9 from useradd and groupadd: the name is taken).
    code: Option<i32>,
    message: String,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Exit code of useradd and groupadd when the name (or, for `useradd
/// --user-group`, the group's) is taken.
const NAME_TAKEN: i32 = 9;

/// Exit code of userdel and groupdel when there is no such account.
const NO_SUCH_ACCOUNT: i32 = 6;

/// Runs a shadow-utils tool (useradd, groupadd, usermod, userdel,
/// groupdel). Tests in one binary run in parallel, and each tool takes the
/// passwd and group locks: while another holds them it retries.
fn shadow(tool: &str, args: &[&str]) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(tool).args(args).output().map_err(|e| Failed {
            code: None,
            message: format!("{tool}: {e}"),
        })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.contains("lock") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        return Err(Failed {
            code: out.status.code(),
            message: format!("{tool} {}: {stderr}", args.join(" ")),
        });
    }
}

/// Runs `tool`; if the name is taken, removes the leftover with `cleanup`
/// and runs it again. A name from [`unique_name`] that is taken belongs to
/// a process that is gone (an interrupted run whose pid came round again).
fn create(tool: &str, args: &[&str], cleanup: impl Fn()) {
    match shadow(tool, args) {
        Ok(()) => {}
        Err(e) if e.code == Some(NAME_TAKEN) => {
            cleanup();
            if let Err(e) = shadow(tool, args) {
                panic!("{e}");
            }
        }
        Err(e) => panic!("{e}"),
    }
}

/// Removes an account, reporting (never panicking: this runs in `Drop`,
/// also while a failed test unwinds) what could not be removed.
fn remove(tool: &str, args: &[&str]) {
    match shadow(tool, args) {
        Err(e) if e.code != Some(NO_SUCH_ACCOUNT) => eprintln!("test cleanup: {e}"),
        _ => {}
    }
}

/// Removes every user, then every group, whose name starts with one of
/// `prefixes`: the accounts a test had con itself create under prefixes of
/// its own. Never panics (it is meant for `Drop`); reports what it could
/// not remove.
pub fn remove_accounts(prefixes: &[&str]) {
    let names = |file: &str| -> Vec<String> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(':').next())
            .filter(|n| prefixes.iter().any(|p| !p.is_empty() && n.starts_with(p)))
            .map(str::to_owned)
            .collect()
    };
    for user in names("/etc/passwd") {
        remove("userdel", &["--force", &user]);
    }
    for group in names("/etc/group") {
        remove("groupdel", &[&group]);
    }
}

/// A Linux group made for one test; removed on drop.
#[derive(Debug)]
pub struct TestGroup {
    /// The group's name.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

impl TestGroup {
    /// A group with a [`unique_name`] starting with `tag`.
    pub fn unique(tag: &str) -> Self {
        Self::create(&unique_name(tag))
    }

    /// A group called `name` (a leftover of that name is replaced).
    pub fn create(name: &str) -> Self {
        create("groupadd", &[name], || remove("groupdel", &[name]));
        // The guard exists before the lookup, so the group goes even if it
        // fails.
        let mut group = Self {
            name: name.to_owned(),
            gid: 0,
        };
        group.gid = nix::unistd::Group::from_name(name)
            .expect("group database readable")
            .expect("group just created")
            .gid
            .as_raw();
        group
    }

    /// Makes `user` a member (a supplementary group of it).
    pub fn add(&self, user: &TestUser) {
        if let Err(e) = shadow("usermod", &["--append", "--groups", &self.name, &user.name]) {
            panic!("{e}");
        }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        remove("groupdel", &[&self.name]);
    }
}

/// A Linux user made for one test: no home directory, no login shell;
/// removed on drop, also when the test fails.
#[derive(Debug)]
pub struct TestUser {
    /// The user's name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Whether the primary group was made with the user (and goes with it).
    own_group: bool,
}

impl TestUser {
    /// A user with a [`unique_name`] starting with `tag`, and a group of
    /// its own.
    pub fn unique(tag: &str) -> Self {
        Self::create(&unique_name(tag))
    }

    /// A user called `name` (such as an agent's, `<prefix><agent>`), with a
    /// group of its own. A leftover user or group of that name is replaced.
    pub fn create(name: &str) -> Self {
        Self::add(name, None)
    }

    /// A user with a [`unique_name`] starting with `tag` whose primary group
    /// is `group`.
    pub fn unique_in(tag: &str, group: &TestGroup) -> Self {
        Self::add(&unique_name(tag), Some(group))
    }

    fn add(name: &str, primary: Option<&TestGroup>) -> Self {
        let mut args = vec!["--no-create-home", "--shell", "/usr/sbin/nologin"];
        match primary {
            Some(group) => args.extend(["--gid", group.name.as_str()]),
            None => args.push("--user-group"),
        }
        args.push(name);
        create("useradd", &args, || {
            remove("userdel", &["--force", name]);
            if primary.is_none() {
                remove("groupdel", &[name]);
            }
        });
        // The guard exists before the lookup, so the user goes even if it
        // fails.
        let mut user = Self {
            name: name.to_owned(),
            uid: 0,
            gid: 0,
            own_group: primary.is_none(),
        };
        let entry = nix::unistd::User::from_name(name)
            .expect("user database readable")
            .expect("user just created");
        user.uid = entry.uid.as_raw();
        user.gid = entry.gid.as_raw();
        user
    }

    /// `program` run as this user: its uid and primary gid, no
    /// supplementary groups.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.setpriv("--clear-groups", program.as_ref())
    }

    /// `program` run as this user with the groups the group database gives
    /// it, the way the supervisor starts an agent's run.
    pub fn command_with_groups(&self, program: impl AsRef<OsStr>) -> Command {
        self.setpriv("--init-groups", program.as_ref())
    }

    fn setpriv(&self, groups: &str, program: &OsStr) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args([groups, "--"])
            .arg(program);
        cmd
    }

    /// Gives `path` (not a symlink's target) to this user and its group.
    pub fn chown(&self, path: &Path) {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // --force: a process the test left behind must not keep the account.
        remove("userdel", &["--force", &self.name]);
        if self.own_group {
            // userdel removes a user's own group itself where USERGROUPS_ENAB
            // is set (Debian's default); not everywhere.
            remove("groupdel", &[&self.name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_keep_their_width() {
        let (a, b) = (unique_name("ct"), unique_name("ct"));
        assert_ne!(a, b);
        assert_eq!((a.len(), b.len()), (9, 9));
        assert!(unique_prefix("abcd").len() <= 12);
    }

    fn exists(name: &str) -> bool {
        nix::unistd::User::from_name(name).unwrap().is_some()
    }

    /// Needs root, like every test that uses these fixtures.
    #[test]
    fn a_user_replaces_a_leftover_runs_commands_as_itself_and_goes_on_drop() {
        let name = unique_name("cts");
        // What an interrupted run leaves: the user and its group.
        shadow("useradd", &["--no-create-home", "--user-group", &name]).unwrap();
        let user = TestUser::create(&name);
        let group = TestGroup::unique("ctsg");
        group.add(&user);
        let id = |cmd: &mut Command| {
            let out = cmd.arg("-G").output().unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        assert_eq!(id(&mut user.command("id")), user.gid.to_string());
        assert_eq!(
            id(&mut user.command_with_groups("id")),
            format!("{} {}", user.gid, group.gid)
        );
        let in_group = TestUser::unique_in("cts", &group);
        assert_eq!(in_group.gid, group.gid);
        drop(user);
        drop(in_group);
        assert!(!exists(&name), "removed on drop");
        assert!(nix::unistd::Group::from_name(&name).unwrap().is_none());
    }

    #[test]
    fn a_user_goes_when_its_test_panics() {
        let name = unique_name("cts");
        let panicked = std::panic::catch_unwind(|| {
            let _user = TestUser::create(&name);
            panic!("the test fails");
        });
        assert!(panicked.is_err());
        assert!(!exists(&name));
    }

    #[test]
    fn accounts_under_a_prefix_are_removed() {
        let prefix = unique_prefix("cts");
        let user = format!("{prefix}a");
        shadow("useradd", &["--no-create-home", "--user-group", &user]).unwrap();
        shadow("groupadd", &[&format!("{prefix}g")]).unwrap();
        remove_accounts(&[&prefix]);
        assert!(!exists(&user));
        assert!(
            nix::unistd::Group::from_name(&format!("{prefix}g"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn base36_pads_and_refuses_what_does_not_fit() {
        assert_eq!(base36(0, 2), "00");
        assert_eq!(base36(35, 2), "0z");
        assert_eq!(base36(4_194_304, PID_DIGITS), "2hwcg");
        assert!(std::panic::catch_unwind(|| base36(36 * 36, 2)).is_err());
    }
}
