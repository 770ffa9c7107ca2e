//! Who may receive a model call sent in plain HTTP to this host.
//!
//! Any local user can listen on a free port ≥ 1024. If `base_url` points at
//! such a port on this host (a local model server) and the server is down,
//! or not started yet, an agent can listen there itself and receive the
//! next call: the API key in its `authorization`/`x-api-key` header and
//! another session's conversation, and it can answer with tool calls of its
//! choosing. TLS would prove the server's identity; plain HTTP proves
//! nothing, so before every attempt over plain HTTP to an address of this
//! host, [`check`] asks the kernel who owns the listening socket(s) that
//! could take the connection (`/proc/net/tcp` and `tcp6`, which give each
//! socket's owner uid) and lets the request go only to root, the client's
//! own uid, or a user named in [`LoopbackTrust`]. Otherwise nothing is sent
//! and the attempt fails with a [`LlmError`] that names the endpoint, the
//! port and the owner.
//!
//! [`decide`] is the pure part (targets, listeners, trusted uids → verdict);
//! the rest gathers its inputs. A listener that changes between the check
//! and reqwest's connect (microseconds later) is not seen: the check narrows
//! the attack to that window, where before it was the whole time the
//! server was down.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

use crate::error::LlmError;

/// The users (besides root and the client's own uid, always trusted) whose
/// listening sockets may receive model calls sent in plain HTTP to this
/// host: `[gateway] loopback_server_users`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoopbackTrust {
    users: Vec<String>,
}

impl LoopbackTrust {
    /// Trust root, the client's own uid and these users.
    pub fn new(users: Vec<String>) -> LoopbackTrust {
        LoopbackTrust { users }
    }

    /// The users named, root and the client's own uid aside.
    pub fn users(&self) -> &[String] {
        &self.users
    }

    /// The trusted uids now: root, our own, and each named user that
    /// exists (a name that does not resolve trusts no one).
    fn uids(&self) -> BTreeSet<u32> {
        let mut uids = BTreeSet::from([0, nix::unistd::geteuid().as_raw()]);
        for name in &self.users {
            if let Ok(Some(user)) = nix::unistd::User::from_name(name) {
                uids.insert(user.uid.as_raw());
            }
        }
        uids
    }
}

/// A listening TCP socket and the uid that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Listener {
    /// The address it is bound to (possibly a wildcard).
    pub addr: SocketAddr,
    /// Its owner, as the kernel reports it.
    pub uid: u32,
}

/// What [`decide`] says about one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not plain HTTP to this host, or every listener that could take the
    /// connection is trusted.
    Send,
    /// Nothing listens where the request would go.
    NoListener(SocketAddr),
    /// This listener could take the connection and is not trusted.
    Untrusted(Listener),
}

/// Whether `ip` reaches this host: loopback, the unspecified address
/// (connecting to it reaches loopback) or one of `own` (this host's
/// interface addresses, which the kernel also delivers locally).
pub(crate) fn is_local(ip: IpAddr, own: &[IpAddr]) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified() || own.iter().any(|o| o.to_canonical() == ip)
}

/// Where a request to `url` may connect on this host, if anywhere: empty
/// for HTTPS (TLS checks the server) and for hosts elsewhere. A name is
/// given as `resolved` (what it resolves to), except `localhost` and
/// `*.localhost`, which are loopback whatever the resolver says.
pub(crate) fn local_targets(url: &Url, resolved: &[IpAddr], own: &[IpAddr]) -> Vec<SocketAddr> {
    if url.scheme() != "http" {
        return Vec::new();
    }
    let Some(port) = url.port_or_known_default() else {
        return Vec::new();
    };
    let ips: Vec<IpAddr> = match url.host() {
        Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(Host::Domain(name)) if is_localhost_name(name) => {
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]
        }
        Some(Host::Domain(_)) => resolved.to_vec(),
        None => Vec::new(),
    };
    let mut targets: Vec<SocketAddr> = Vec::new();
    for ip in ips {
        let addr = SocketAddr::new(ip.to_canonical(), port);
        if is_local(ip, own) && !targets.contains(&addr) {
            targets.push(addr);
        }
    }
    targets
}

/// `localhost`, `localhost.` and names under it (RFC 6761).
fn is_localhost_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether a connection to `target` can be accepted by `listener`: same
/// port, and the same address or a wildcard of a family that takes it (an
/// IPv6 wildcard takes IPv4 too unless `IPV6_V6ONLY`, which the table does
/// not show, so it is assumed to).
pub(crate) fn may_accept(listener: SocketAddr, target: SocketAddr) -> bool {
    if listener.port() != target.port() {
        return false;
    }
    let bound = listener.ip().to_canonical();
    let to = target.ip().to_canonical();
    // Connecting to a wildcard address reaches the host's own addresses,
    // so a target given as one is taken by any listener on the port.
    if bound == to || to.is_unspecified() {
        return true;
    }
    match listener.ip() {
        IpAddr::V4(v4) => v4.is_unspecified() && to.is_ipv4(),
        IpAddr::V6(v6) => v6.is_unspecified(),
    }
}

/// The pure decision: a request whose connection may land on `targets` is
/// sent only if some listener is there and every listener that could
/// accept it is owned by a `trusted` uid. Any untrusted one refuses the
/// request, even next to a trusted one, because which of them the kernel
/// picks is not ours to choose.
pub(crate) fn decide(
    targets: &[SocketAddr],
    listeners: &[Listener],
    trusted: &BTreeSet<u32>,
) -> Verdict {
    let Some(&first) = targets.first() else {
        return Verdict::Send;
    };
    let mut candidates = listeners
        .iter()
        .filter(|l| targets.iter().any(|t| may_accept(l.addr, *t)))
        .peekable();
    if candidates.peek().is_none() {
        return Verdict::NoListener(first);
    }
    match candidates.find(|l| !trusted.contains(&l.uid)) {
        Some(l) => Verdict::Untrusted(*l),
        None => Verdict::Send,
    }
}

/// This host's listening TCP sockets, from the kernel's tables.
fn listeners() -> Result<Vec<Listener>, String> {
    let v4 = procfs::net::tcp().map_err(|e| format!("/proc/net/tcp: {e}"))?;
    // A kernel without IPv6 has no tcp6 table, and no IPv6 listeners.
    let v6 = match procfs::net::tcp6() {
        Ok(v6) => v6,
        Err(procfs::ProcError::NotFound(_)) => Vec::new(),
        Err(e) => return Err(format!("/proc/net/tcp6: {e}")),
    };
    Ok(v4
        .into_iter()
        .chain(v6)
        .filter(|e| e.state == procfs::net::TcpState::Listen)
        .map(|e| Listener {
            addr: e.local_address,
            uid: e.uid,
        })
        .collect())
}

/// This host's interface addresses (empty if they cannot be listed: the
/// loopback ranges are then still checked).
fn own_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// The user name of `uid`, for messages.
fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Checks, right before an attempt, that a request to `url` may be sent:
/// an error (and nothing sent) if it would go in plain HTTP to a listener
/// on this host that `trust` does not cover, or to none.
pub(crate) async fn check(url: &str, trust: &LoopbackTrust) -> Result<(), LlmError> {
    let Ok(parsed) = Url::parse(url) else {
        // reqwest refuses it too, without sending anything.
        return Ok(());
    };
    if parsed.scheme() != "http" {
        return Ok(());
    }
    let resolved: Vec<IpAddr> = match parsed.host() {
        Some(Host::Domain(name)) if !is_localhost_name(name) => {
            let port = parsed.port_or_known_default().unwrap_or(80);
            match tokio::net::lookup_host((name, port)).await {
                Ok(addrs) => addrs.map(|a| a.ip()).collect(),
                Err(e) => {
                    return Err(LlmError::Transport {
                        url: url.to_owned(),
                        detail: format!("cannot resolve {name}: {e}"),
                    });
                }
            }
        }
        _ => Vec::new(),
    };
    let trust = trust.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let targets = local_targets(&parsed, &resolved, &own_addresses());
        if targets.is_empty() {
            return Ok(Verdict::Send);
        }
        Ok(decide(&targets, &listeners()?, &trust.uids()))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let refused = |detail: String| LlmError::Untrusted {
        url: url.to_owned(),
        detail,
    };
    match checked {
        Ok(Verdict::Send) => Ok(()),
        Ok(Verdict::NoListener(addr)) => Err(LlmError::NoListener {
            url: url.to_owned(),
            addr,
        }),
        Ok(Verdict::Untrusted(l)) => Err(refused(format!(
            "the listener on {} (port {}) is owned by uid {}{}, which is neither root nor a user in [gateway] loopback_server_users",
            l.addr,
            l.addr.port(),
            l.uid,
            user_name(l.uid).map_or_else(String::new, |n| format!(" ({n})")),
        ))),
        Err(e) => Err(refused(format!(
            "cannot tell who listens there, so nothing is sent: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn l(addr: &str, uid: u32) -> Listener {
        Listener {
            addr: sa(addr),
            uid,
        }
    }

    #[test]
    fn only_plain_http_to_this_host_is_checked() {
        let own: Vec<IpAddr> = vec!["10.1.2.3".parse().unwrap()];
        let t = |u: &str| local_targets(&url(u), &[], &own);
        assert_eq!(t("https://127.0.0.1:8080/v1"), []);
        assert_eq!(t("https://api.openai.com/v1"), []);
        assert_eq!(t("http://192.0.2.7:8080/v1"), []);
        assert_eq!(t("http://127.0.0.1:8080/v1"), [sa("127.0.0.1:8080")]);
        assert_eq!(t("http://127.9.9.9/v1"), [sa("127.9.9.9:80")]);
        assert_eq!(t("http://[::1]:9/v1"), [sa("[::1]:9")]);
        assert_eq!(t("http://[::ffff:127.0.0.1]:9"), [sa("127.0.0.1:9")]);
        assert_eq!(t("http://0.0.0.0:9"), [sa("0.0.0.0:9")]);
        assert_eq!(t("http://10.1.2.3:9"), [sa("10.1.2.3:9")]);
        assert_eq!(
            t("http://LocalHost.:9/v1"),
            [sa("127.0.0.1:9"), sa("[::1]:9")]
        );
        assert_eq!(
            t("http://model.localhost:9/v1"),
            [sa("127.0.0.1:9"), sa("[::1]:9")]
        );
        // Other names are checked by what they resolve to.
        let resolved: Vec<IpAddr> =
            vec!["127.0.1.1".parse().unwrap(), "192.0.2.1".parse().unwrap()];
        assert_eq!(
            local_targets(&url("http://myhost:9"), &resolved, &own),
            [sa("127.0.1.1:9")]
        );
        assert_eq!(local_targets(&url("http://remote:9"), &[], &own), []);
    }

    #[test]
    fn wildcards_take_their_family() {
        assert!(may_accept(sa("0.0.0.0:9"), sa("127.0.0.1:9")));
        assert!(may_accept(sa("[::]:9"), sa("127.0.0.1:9")));
        assert!(may_accept(sa("[::]:9"), sa("[::1]:9")));
        assert!(may_accept(sa("[::ffff:127.0.0.1]:9"), sa("127.0.0.1:9")));
        assert!(may_accept(sa("127.0.0.1:9"), sa("0.0.0.0:9")));
        assert!(!may_accept(sa("0.0.0.0:9"), sa("[::1]:9")));
        assert!(!may_accept(sa("127.0.0.2:9"), sa("127.0.0.1:9")));
        assert!(!may_accept(sa("127.0.0.1:10"), sa("127.0.0.1:9")));
    }

    #[test]
    fn the_decision() {
        let trusted = BTreeSet::from([0, 998]);
        let local = [sa("127.0.0.1:8080")];
        // Not this host: nothing to decide.
        assert_eq!(
            decide(&[], &[l("127.0.0.1:8080", 1001)], &trusted),
            Verdict::Send
        );
        // Root's or a named user's server.
        assert_eq!(
            decide(&local, &[l("127.0.0.1:8080", 0)], &trusted),
            Verdict::Send
        );
        assert_eq!(
            decide(&local, &[l("[::]:8080", 998)], &trusted),
            Verdict::Send
        );
        // The attack: the server is down and an agent holds the port.
        assert_eq!(
            decide(&local, &[l("127.0.0.1:8080", 1001)], &trusted),
            Verdict::Untrusted(l("127.0.0.1:8080", 1001))
        );
        assert_eq!(
            decide(&local, &[l("0.0.0.0:8080", 1001)], &trusted),
            Verdict::Untrusted(l("0.0.0.0:8080", 1001))
        );
        // Nothing there, or only elsewhere.
        assert_eq!(decide(&local, &[], &trusted), Verdict::NoListener(local[0]));
        assert_eq!(
            decide(
                &local,
                &[l("127.0.0.1:8081", 0), l("[::1]:8080", 1001)],
                &trusted
            ),
            Verdict::NoListener(local[0])
        );
        // An untrusted listener next to a trusted one still refuses.
        let both = [sa("127.0.0.1:8080"), sa("[::1]:8080")];
        assert_eq!(
            decide(
                &both,
                &[l("127.0.0.1:8080", 0), l("[::1]:8080", 1001)],
                &trusted
            ),
            Verdict::Untrusted(l("[::1]:8080", 1001))
        );
        assert_eq!(
            decide(&both, &[l("[::1]:8080", 0)], &trusted),
            Verdict::Send
        );
    }

    #[test]
    fn listeners_are_read_with_their_owner() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let found = listeners().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert!(
            found.contains(&l(&addr.to_string(), me)),
            "{addr} in {found:?}"
        );
        let v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let addr6 = v6.local_addr().unwrap();
        assert!(
            listeners().unwrap().contains(&l(&addr6.to_string(), me)),
            "{addr6}"
        );
    }

    #[tokio::test]
    async fn check_lets_our_own_listener_through_and_names_the_missing_one() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let trust = LoopbackTrust::default();
        check(
            &format!("http://127.0.0.1:{port}/v1/chat/completions"),
            &trust,
        )
        .await
        .unwrap();
        check(&format!("http://localhost:{port}/v1"), &trust)
            .await
            .unwrap();
        drop(held);
        let err = check(
            &format!("http://127.0.0.1:{port}/v1/chat/completions"),
            &trust,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "refused to send to http://127.0.0.1:{port}/v1/chat/completions: nothing listens on 127.0.0.1:{port} (port {port}); over plain HTTP on this host con sends only to a listener owned by root or a user in [gateway] loopback_server_users"
            )
        );
        assert!(
            err.is_retryable(),
            "a server that is starting may be there next time"
        );
        check("https://127.0.0.1:1/v1", &trust).await.unwrap();
    }
}
