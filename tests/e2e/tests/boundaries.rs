//! Permission boundaries under a real systemd, tried as the agents would try
//! them: after `con bootstrap` of the default profile, each probe runs as an
//! agent's Linux user inside the container and the kernel (or sudo) must say
//! no; the few things an agent may do are checked to work, so a probe cannot
//! pass by failing for an unrelated reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use con_e2e::{CONFIGS_PATH, Container, Image};

#[test]
fn agents_are_held_to_their_own_trees_and_grants() {
    if !con_e2e::enabled() {
        return;
    }
    let image = Image::ensure().unwrap();
    let c = Container::boot(&image, "boundaries").unwrap();
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
}
