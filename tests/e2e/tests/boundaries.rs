//! Permission boundaries under a real systemd, tried as the agents would try
//! them: after `con bootstrap` of the default profile, each probe runs as an
//! agent's Linux user inside the container and the kernel (or sudo) must say
//! no; the few things an agent may do are checked to work, so a probe cannot
//! pass by failing for an unrelated reason. That includes the network: DNS
//! goes to the host's resolvers and nowhere else, by the kernel's egress
//! rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use con_e2e::CONFIGS_PATH;

/// The container's resolvers (TEST-NET-1, reached through a veth made for
/// the purpose), and another address on the same network.
const RESOLVER_1: &str = "192.0.2.53";
const RESOLVER_2: &str = "192.0.2.54";
const NOT_A_RESOLVER: &str = "192.0.2.1";

#[test]
fn agents_are_held_to_their_own_trees_and_grants() {
    let Some(c) = con_e2e::scenario("boundaries").unwrap() else {
        return;
    };
    // Resolvers of our own, not whatever the image inherited from the host
    // that built it: bootstrap reads them from here.
    c.sh_ok(&format!(
        "printf 'nameserver {RESOLVER_1}\\nnameserver {RESOLVER_2}\\n' > /etc/resolv.conf"
    ))
    .unwrap();
    c.exec_ok(&[
        "con",
        "bootstrap",
        "--profile",
        &format!("{CONFIGS_PATH}/default"),
    ])
    .unwrap();

    let refused = |user: &str, script: &str| {
        let out = c.sh_as(user, script).unwrap();
        assert!(
            !out.success(),
            "{user} must not be able to: {script}\n{out}"
        );
    };
    let allowed = |user: &str, script: &str| {
        let out = c.sh_as(user, script).unwrap();
        assert!(out.success(), "{user} should be able to: {script}\n{out}");
    };

    // Another agent's directories: nothing to read, nothing to write.
    for sub in ["outbox", "processed", "failed", "sessions", "workspace"] {
        refused("a-concierge", &format!("ls /srv/con/agents/sysadmin/{sub}"));
        refused(
            "a-sysadmin",
            &format!("touch /srv/con/agents/concierge/{sub}/x"),
        );
    }
    refused("a-concierge", "cat /srv/con/agents/sysadmin/inbox/*");
    // Its own tree works.
    allowed(
        "a-concierge",
        "touch /srv/con/agents/concierge/workspace/mine && ls /srv/con/agents/concierge/outbox",
    );

    // Inboxes: an operator may task every other agent, as policy explain
    // says; no agent writes the outer inbox (that is the operators').
    allowed(
        "a-concierge",
        "printf x > /srv/con/agents/sysadmin/inbox/.probe.tmp && rm /srv/con/agents/sysadmin/inbox/.probe.tmp",
    );
    refused("a-concierge", "touch /srv/con/inbox/x.task");

    // What constrains an agent is not its own to change.
    refused("a-concierge", "cat /etc/con/env");
    refused("a-concierge", "echo x >> /etc/con/con.toml");
    refused("a-concierge", "echo x >> /home/a-concierge/AGENTS.md");
    refused(
        "a-concierge",
        "mv /home/a-concierge/AGENTS.md /home/a-concierge/old.md",
    );
    refused("a-concierge", "ls /var/lib/con/events");
    refused(
        "a-concierge",
        "touch /srv/con/agents/concierge/workspace/skills/new.md",
    );

    // sudo: the sysadmin's allowlist works, anything else and every other
    // agent are refused.
    allowed(
        "a-sysadmin",
        "sudo -n /usr/bin/journalctl --no-pager -n 1 >/dev/null",
    );
    refused("a-sysadmin", "sudo -n /bin/cat /etc/shadow");
    refused(
        "a-sysadmin",
        "sudo -n /usr/local/bin/con --root /tmp commission x",
    );
    refused("a-concierge", "sudo -n /usr/bin/journalctl --no-pager -n 1");
    refused("a-strategist", "sudo -n /usr/local/bin/con agent list");

    // Names that would be paths or shell are refused before any change.
    for name in ["../x", "a;b", "x$(id)", "Upper"] {
        let out = c.exec(&["con", "commission", name]).unwrap();
        assert!(!out.success(), "commission {name:?}: {out}");
        assert!(
            out.stderr.contains("must match"),
            "commission {name:?}: {out}"
        );
    }
    let users = c.exec_ok(&["getent", "passwd"]).unwrap().stdout;
    assert!(
        !users.contains("a-x:") && !users.contains("a-Upper"),
        "{users}"
    );

    // DNS is held to the resolvers. The container's private network has
    // only loopback, which agents may use freely, so a veth gives the
    // datagrams somewhere to go; with nothing behind it, a send that the
    // rules let through simply succeeds.
    c.sh_ok(
        "ip link add e2e-dns type veth peer name e2e-dns-peer\n\
         ip link set e2e-dns-peer up\n\
         ip addr add 192.0.2.2/24 dev e2e-dns\n\
         ip link set e2e-dns up",
    )
    .unwrap();
    let table = c.exec_ok(&["nft", "list", "table", "inet", "con"]).unwrap();
    assert!(
        table
            .stdout
            .contains(&format!("{RESOLVER_1}, {RESOLVER_2}")),
        "{table}"
    );
    // bash's /dev/udp: connect() and one send(2) of a datagram to port 53.
    let dns = |user: Option<&str>, addr: &str| {
        let script = format!("exec 3>/dev/udp/{addr}/53 && printf q >&3");
        let command = c.command(&["/bin/bash", "-c", &script]);
        match user {
            Some(user) => command.user(user),
            None => command,
        }
        .output()
        .unwrap()
    };
    for resolver in [RESOLVER_1, RESOLVER_2] {
        let out = dns(Some("a-concierge"), resolver);
        assert!(out.success(), "DNS to resolver {resolver}: {out}");
    }
    let other = dns(Some("a-concierge"), NOT_A_RESOLVER);
    assert!(
        !other.success() && other.stderr.contains("Operation not permitted"),
        "DNS to {NOT_A_RESOLVER}, not a resolver, must be refused by the kernel: {other}"
    );
    // The same datagram from root is sent: the route is there, the rule
    // is what refused the agent.
    let root = dns(None, NOT_A_RESOLVER);
    assert!(root.success(), "root's DNS to {NOT_A_RESOLVER}: {root}");
    let explain = c
        .exec_ok(&["con", "policy", "explain", "concierge"])
        .unwrap();
    assert!(
        explain.stdout.contains(&format!(
            "DNS (udp and tcp port 53) to {RESOLVER_1}, {RESOLVER_2} only (from /etc/resolv.conf): allowed"
        )),
        "{explain}"
    );
}
