//! Contract evaluation, measured side by side in one run (see
//! BENCHMARKS.md), on two hosts bootstrapped from `configs/default` (the
//! shipped library installed, agents' users and directories real, so every
//! check does its real work and passes):
//!
//! 1. one healthcheck (`RunContracts`, detective contracts and the
//!    built-in checks, every result recorded) through the daemon at its
//!    default concurrency against the same on a daemon running one check at
//!    a time, alternating, median wall time of the request;
//! 2. the CPU time a supervising daemon (which keeps the contracts'
//!    schedule itself) uses while idle, with the shipped library against
//!    the same daemon with an empty contracts directory, both at once:
//!    `utime + stime` of the daemon and of its reaped children (the
//!    checks' processes) from `/proc`, over `CON_BENCH_IDLE_SECS` (default
//!    120) and extrapolated to an hour.
//!
//! Run as root (it creates users and a network namespace):
//! `cargo bench -p con --bench contracts`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use con_protocol::{Client, RunContracts};
use con_test_support::{Daemon, Root, remove_accounts, unique_name, unique_prefix, workspace};

const CON: &str = env!("CARGO_BIN_EXE_con");

/// A network namespace of its own, so bootstrap's egress table never
/// touches the host's ruleset; deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = unique_name("con-bc");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ok(&Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap());
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A bootstrapped host; its accounts are removed on drop.
struct Host {
    root: Root,
    group_prefix: String,
}

impl Drop for Host {
    fn drop(&mut self) {
        remove_accounts(&[self.root.user_prefix(), &self.group_prefix]);
    }
}

impl Host {
    fn flags(&self) -> Vec<String> {
        vec![
            "--root".into(),
            self.root.path().display().to_string(),
            "--user-prefix".into(),
            self.root.user_prefix().into(),
            "--group-prefix".into(),
            self.group_prefix.clone(),
        ]
    }

    fn contracts_dir(&self) -> PathBuf {
        self.root.path().join("srv/con/contracts")
    }

    /// `con daemon` on this host with `args`.
    fn daemon(&self, args: &[&str]) -> Daemon {
        let mut all = vec!["--group-prefix", &self.group_prefix];
        all.extend_from_slice(args);
        Daemon::start_with(CON, &self.root, &all, &[])
    }
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

/// `con bootstrap --profile configs/default` on a new temp root, in `netns`;
/// the load ceiling and the free disk and memory floors moved out of reach
/// (a busy benchmark machine is not what the checks should fail on here).
fn bootstrapped(netns: &Netns) -> Host {
    let host = Host {
        root: Root::new(),
        group_prefix: unique_prefix("g"),
    };
    let profile = host.root.path().join("profile");
    copy_dir(&workspace().join("configs/default"), &profile);
    let out = Command::new("ip")
        .args(["netns", "exec", &netns.0, CON])
        .args(host.flags())
        .args(["bootstrap", "--profile", profile.to_str().unwrap()])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    ok(&out);
    let config = host.root.path().join("etc/con/con.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    // Nor is a full disk or a busy memory: the same checks run, at floors
    // the machine clears.
    let edited = text
        .replace("max_load_per_cpu = 4.0", "max_load_per_cpu = 10000.0")
        .replace("disk_min_free_pct = 15", "disk_min_free_pct = 0")
        .replace("mem_min_free_pct = 10", "mem_min_free_pct = 0");
    assert_eq!(
        edited.matches("10000.0").count() + edited.matches("_pct = 0\n").count(),
        3,
        "the profile's [contracts.system] thresholds moved"
    );
    std::fs::write(&config, edited).unwrap();
    host
}

/// One healthcheck through the daemon: its wall time, and each check's run
/// time as recorded.
fn healthcheck(socket: &Path) -> (Duration, Vec<(String, Duration)>) {
    let start = Instant::now();
    let runs = Client::connect(socket)
        .unwrap()
        .run_contracts(RunContracts {
            ids: Vec::new(),
            detective_only: true,
        })
        .unwrap();
    let wall = start.elapsed();
    let failing: Vec<_> = runs
        .iter()
        .filter(|r| con_contracts::is_failure(r.status))
        .map(|r| format!("{}/{}: {}", r.contract, r.check, r.detail))
        .collect();
    assert!(failing.is_empty(), "checks failing: {failing:?}");
    let each = runs
        .iter()
        .map(|r| {
            (
                format!("{}/{}", r.contract, r.check),
                Duration::from_millis(r.duration_ms),
            )
        })
        .collect();
    (wall, each)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// CPU time of `pid` and of its reaped children, in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime 14, stime 15, cutime 16, cstime 17 (1-based, of the whole line).
    (f[11] + f[12], f[13] + f[14])
}

fn clock_ticks_per_sec() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn contract_results(socket: &Path) -> usize {
    con_test_support::all_events(socket)
        .iter()
        .filter(|e| matches!(e.payload, con_event::Payload::ContractResult(_)))
        .count()
}

fn main() {
    let netns = Netns::new();
    let a = bootstrapped(&netns);
    let b = bootstrapped(&netns);

    // 1. Parallel (the daemon's default) against one check at a time.
    let parallel = con_daemon::PARALLEL_CHECKS.to_string();
    let (wide, narrow) = (
        a.daemon(&["--supervisor", "systemd", "--check-concurrency", &parallel]),
        b.daemon(&["--supervisor", "systemd", "--check-concurrency", "1"]),
    );
    for _ in 0..2 {
        healthcheck(&a.root.socket());
        healthcheck(&b.root.socket());
    }
    let rounds: usize = std::env::var("CON_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let (mut wide_walls, mut narrow_walls) = (Vec::new(), Vec::new());
    // Each check's time when it runs alone (the sequential daemon).
    let mut alone: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    for _ in 0..rounds {
        let (w, _) = healthcheck(&a.root.socket());
        wide_walls.push(w);
        let (w, each) = healthcheck(&b.root.socket());
        narrow_walls.push(w);
        for (check, d) in each {
            alone.entry(check).or_default().push(d);
        }
    }
    drop((wide, narrow));
    let checks = alone.len();
    let alone: Vec<(String, Duration)> = alone
        .into_iter()
        .map(|(check, ds)| (check, median(ds)))
        .collect();
    let work: Duration = alone.iter().map(|(_, d)| *d).sum();
    let (longest, longest_time) = alone.iter().max_by_key(|(_, d)| *d).cloned().unwrap();
    let (wide_wall, narrow_wall) = (median(wide_walls), median(narrow_walls));

    // 2. Idle CPU with the scheduler on: the library against none.
    for entry in std::fs::read_dir(b.contracts_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let idle: u64 = std::env::var("CON_BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let with = a.daemon(&["--supervisor", "daemon"]);
    let without = b.daemon(&["--supervisor", "daemon"]);
    // Past start-up (opening the log, the first listing of the directory).
    std::thread::sleep(Duration::from_secs(2));
    let results_before = (
        contract_results(&a.root.socket()),
        contract_results(&b.root.socket()),
    );
    let before = (cpu_ticks(with.pid()), cpu_ticks(without.pid()));
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(idle));
    let after = (cpu_ticks(with.pid()), cpu_ticks(without.pid()));
    let elapsed = started.elapsed().as_secs_f64();
    let results = (
        contract_results(&a.root.socket()) - results_before.0,
        contract_results(&b.root.socket()) - results_before.1,
    );
    drop((with, without));
    let hz = clock_ticks_per_sec();
    // Seconds of CPU per hour of idling.
    let per_hour = |ticks: u64| ticks as f64 / hz * 3600.0 / elapsed;
    let own = |x: ((u64, u64), (u64, u64))| (x.1.0 - x.0.0, x.1.1 - x.0.1);
    let (with_own, with_children) = own((before.0, after.0));
    let (without_own, without_children) = own((before.1, after.1));

    println!("| measurement | value | baseline (same run) | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| one healthcheck ({checks} checks), concurrency {parallel} vs 1, median of {rounds} | {:.1} ms | {:.1} ms | {:.2} |",
        wide_wall.as_secs_f64() * 1e3,
        narrow_wall.as_secs_f64() * 1e3,
        wide_wall.as_secs_f64() / narrow_wall.as_secs_f64()
    );
    println!(
        "| the checks' own run time when run alone, summed (medians) | {:.1} ms | | |",
        work.as_secs_f64() * 1e3
    );
    println!(
        "| the longest check alone ({longest}), median | {:.1} ms | | |",
        longest_time.as_secs_f64() * 1e3
    );
    println!(
        "| idle daemon CPU per hour, shipped library vs no contracts: daemon | {:.2} s | {:.2} s | {:.2} |",
        per_hour(with_own),
        per_hour(without_own),
        per_hour(with_own) / per_hour(without_own).max(f64::MIN_POSITIVE)
    );
    println!(
        "| idle daemon CPU per hour: its checks' processes | {:.2} s | {:.2} s | |",
        per_hour(with_children),
        per_hour(without_children)
    );
    println!(
        "| idle daemon CPU per hour: both | {:.2} s | {:.2} s | {:.2} |",
        per_hour(with_own + with_children),
        per_hour(without_own + without_children),
        per_hour(with_own + with_children)
            / per_hour(without_own + without_children).max(f64::MIN_POSITIVE)
    );
    println!(
        "| contract results recorded in {elapsed:.0} s idle | {} | {} | |",
        results.0, results.1
    );
}
