#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Egress filtering, as the kernel enforces it: each test gets its own
//! network namespace and Linux user, applies the plan there, and connects
//! as that user and as root. The host's own ruleset is never touched.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use con_provision::egress::{self, EgressPlan};
use con_test_support::{TestUser, unique_name};

const ALLOWED: u16 = 8080;
const OTHER: u16 = 9090;

fn sh(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = sh(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace with loopback up; deleted on drop, pass or fail.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let ns = Netns(unique_name("con-egress-"));
        // One of this name can only be a leftover of an interrupted run.
        let _ = sh("ip", &["netns", "del", &ns.0]);
        ok("ip", &["netns", "add", &ns.0]);
        ok("ip", &["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// Listens on 127.0.0.1 at both test ports, as root; killed on drop.
    fn listen(&self) -> Listener {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "/usr/bin/python3", "-c"])
            .arg(format!(
                "import socket, select, sys\n\
                 ls = []\n\
                 for p in ({ALLOWED}, {OTHER}):\n\
                 \x20   s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 \x20   s.bind(('127.0.0.1', p)); s.listen(16); ls.append(s)\n\
                 print('ready', flush=True)\n\
                 while True:\n\
                 \x20   for s in select.select(ls, [], [])[0]:\n\
                 \x20       s.accept()[0].close()\n"
            ))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Listener(child)
    }

    /// Connects to 127.0.0.1:`port` inside the namespace, as `user` (uid,
    /// gid) or as root: whether it connected, and how long it took.
    fn connect(&self, user: Option<(u32, u32)>, port: u16) -> (bool, Duration, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]);
        if let Some((uid, gid)) = user {
            cmd.arg("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .args(["--clear-groups", "--"]);
        }
        cmd.args(["timeout", "10", "/bin/bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}"));
        let started = Instant::now();
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn nft(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.0, "nft"];
        all.extend(args);
        ok("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.0]);
    }
}

struct Listener(Child);

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn network(ports: &[u16], loopback: bool) -> con_config::Network {
    con_config::Network {
        outbound_filter: true,
        allowed_ports: ports.to_vec(),
        allow_dns: true,
        dns_servers: None,
        allow_loopback: loopback,
    }
}

fn plan_for(user: &TestUser, network: &con_config::Network, table: &str) -> EgressPlan {
    egress::plan(network, &[("worker".to_owned(), user.uid)], table, &[])
}

/// The host's own tables, to show the tests never touch them.
fn host_tables() -> String {
    ok("nft", &["list", "tables"])
}

#[test]
fn the_agent_uid_is_filtered_and_root_is_not() {
    let host_before = host_tables();
    let ns = Netns::new();
    let user = TestUser::unique("egt");
    let _listener = ns.listen();
    let table = unique_name("con_t");

    // Before any rules, the user reaches both ports.
    assert!(ns.connect(Some((user.uid, user.gid)), OTHER).0);

    // Loopback is not exempt here, so the port rules decide.
    egress::apply(
        &plan_for(&user, &network(&[ALLOWED], false), &table),
        Some(&ns.0),
    )
    .unwrap();
    let (connected, took, stderr) = ns.connect(Some((user.uid, user.gid)), OTHER);
    assert!(!connected, "the agent reached a port it may not");
    assert!(
        took < Duration::from_secs(3),
        "rejected, not dropped: the agent learns at once ({took:?}, {stderr})"
    );
    // icmpx admin-prohibited reaches the agent's connect() as EHOSTUNREACH.
    assert!(stderr.contains("No route to host"), "{stderr}");
    assert!(ns.connect(None, OTHER).0, "root is not filtered");
    assert!(
        ns.connect(Some((user.uid, user.gid)), ALLOWED).0,
        "an allowed port is reachable"
    );

    // With loopback allowed, every local port is reachable again.
    egress::apply(
        &plan_for(&user, &network(&[ALLOWED], true), &table),
        Some(&ns.0),
    )
    .unwrap();
    assert!(ns.connect(Some((user.uid, user.gid)), OTHER).0);

    assert_eq!(host_tables(), host_before, "the host ruleset changed");
    assert!(!host_tables().contains(&table));
}

#[test]
fn a_second_apply_replaces_the_table_atomically() {
    let ns = Netns::new();
    let user = TestUser::unique("egt");
    let _listener = ns.listen();
    let table = unique_name("con_t");
    let first = plan_for(&user, &network(&[ALLOWED], false), &table);
    let second = plan_for(&user, &network(&[OTHER], false), &table);

    egress::apply(&first, Some(&ns.0)).unwrap();
    // The same plan again: the add/delete/add transaction works on an
    // existing table too.
    egress::apply(&first, Some(&ns.0)).unwrap();
    egress::apply(&second, Some(&ns.0)).unwrap();

    let listing = ns.nft(&["list", "table", "inet", &table]);
    assert!(
        listing.contains(&format!("tcp dport {OTHER} accept")),
        "{listing}"
    );
    assert!(!listing.contains(&ALLOWED.to_string()), "{listing}");
    assert_eq!(listing.matches("chain agents").count(), 1, "{listing}");
    assert!(!ns.connect(Some((user.uid, user.gid)), ALLOWED).0);
    assert!(ns.connect(Some((user.uid, user.gid)), OTHER).0);

    // A broken script changes nothing: the transaction is all or nothing.
    let broken = EgressPlan {
        table: table.clone(),
        script: format!("{}\nthis is not nftables\n", first.script),
    };
    let err = egress::apply(&broken, Some(&ns.0)).unwrap_err().to_string();
    assert!(err.contains("nft -f -"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    assert_eq!(ns.nft(&["list", "table", "inet", &table]), listing);
}

#[test]
fn drift_names_deleted_rules_changed_members_and_missing_tables() {
    let ns = Netns::new();
    let user = TestUser::unique("egt");
    let table = unique_name("con_t");
    let plan = plan_for(&user, &network(&[443, ALLOWED], true), &table);

    assert_eq!(
        egress::drift(&plan, Some(&ns.0)).unwrap(),
        [format!("table inet {table} is missing")]
    );
    egress::apply(&plan, Some(&ns.0)).unwrap();
    assert_eq!(
        egress::drift(&plan, Some(&ns.0)).unwrap(),
        Vec::<String>::new()
    );

    // Someone deletes the port rule and adds a uid.
    let chain = ns.nft(&["-a", "list", "chain", "inet", &table, "agents"]);
    let handle = chain
        .lines()
        .find(|l| l.contains("tcp dport"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap()
        .trim()
        .to_owned();
    ns.nft(&[
        "delete", "rule", "inet", &table, "agents", "handle", &handle,
    ]);
    ns.nft(&["add", "element", "inet", &table, "agent_uids", "{ 4242 }"]);
    let drift = egress::drift(&plan, Some(&ns.0)).unwrap();
    assert_eq!(drift.len(), 2, "{drift:?}");
    assert_eq!(drift[0], "set agent_uids has unexpected 4242");
    assert!(
        drift[1].starts_with("chain agents lacks rule "),
        "{drift:?}"
    );
    assert!(drift[1].contains("8080"), "{drift:?}");

    // An extra rule is drift too.
    egress::apply(&plan, Some(&ns.0)).unwrap();
    ns.nft(&["insert", "rule", "inet", &table, "agents", "accept"]);
    let drift = egress::drift(&plan, Some(&ns.0)).unwrap();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert!(
        drift[0].starts_with("chain agents has unexpected rule "),
        "{drift:?}"
    );

    // Re-applying repairs everything.
    egress::apply(&plan, Some(&ns.0)).unwrap();
    assert_eq!(
        egress::drift(&plan, Some(&ns.0)).unwrap(),
        Vec::<String>::new()
    );

    // Turning the filter off deletes the table; until then that is drift.
    let mut off = network(&[443], true);
    off.outbound_filter = false;
    let off = plan_for(&user, &off, &table);
    assert_eq!(
        egress::drift(&off, Some(&ns.0)).unwrap(),
        [format!("table inet {table} exists but should not")]
    );
    egress::apply(&off, Some(&ns.0)).unwrap();
    assert!(!ns.nft(&["list", "tables"]).contains(&table));
    assert_eq!(
        egress::drift(&off, Some(&ns.0)).unwrap(),
        Vec::<String>::new()
    );
    // Deleting what is not there is fine too.
    egress::apply(&off, Some(&ns.0)).unwrap();
}

#[test]
fn errors_are_one_line_and_name_the_command() {
    let plan = egress::plan(&network(&[443], true), &[], "con_t", &[]);
    let err = egress::apply(&plan, Some("con-egress-no-such-ns"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("ip netns exec con-egress-no-such-ns nft -f -: "),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    let bad = EgressPlan {
        table: "con; flush ruleset".to_owned(),
        script: String::new(),
    };
    assert!(egress::apply(&bad, None).is_err());
    assert!(egress::drift(&bad, None).is_err());
}

/// DNS goes to the host's resolver only: a datagram to port 53 anywhere
/// else is a way out (a name is a message), so the kernel rejects it.
#[test]
fn dns_reaches_the_resolver_and_no_other_address() {
    let ns = Netns::new();
    let user = TestUser::unique("egd");
    let table = unique_name("con_t");
    let mut echo = Command::new("ip")
        .args(["netns", "exec", &ns.0, "/usr/bin/python3", "-c"])
        .arg(
            "import select, socket\n\
             ss = []\n\
             for addr in ('127.0.0.1', '127.0.0.2'):\n\
             \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             \x20   s.bind((addr, 53)); ss.append(s)\n\
             print('ready', flush=True)\n\
             while True:\n\
             \x20   for s in select.select(ss, [], [])[0]:\n\
             \x20       d, a = s.recvfrom(512)\n\
             \x20       s.sendto(d, a)\n",
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(echo.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let _echo = Listener(echo);
    let query = |addr: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.0, "setpriv"])
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .args(["--clear-groups", "--", "/usr/bin/python3", "-c"])
            .arg(
                "import socket, sys\n\
                 s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 s.settimeout(3)\n\
                 s.connect((sys.argv[1], 53))\n\
                 try:\n\
                 \x20   s.send(b'q'); s.recv(512); print('answered')\n\
                 except OSError as e:\n\
                 \x20   print('refused', e)\n",
            )
            .arg(addr)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        query("127.0.0.2"),
        "answered",
        "unfiltered, any address answers"
    );

    let resolver = ["127.0.0.1".parse().unwrap()];
    let plan = egress::plan(
        &network(&[], false),
        &[("worker".to_owned(), user.uid)],
        &table,
        &resolver,
    );
    egress::apply(&plan, Some(&ns.0)).unwrap();
    assert_eq!(query("127.0.0.1"), "answered", "the resolver");
    let other = query("127.0.0.2");
    assert!(
        other.starts_with("refused"),
        "another address on port 53: {other}"
    );
}
