//! Networked sandboxes in the worker: the sandbox networks of `[network]` (mechanics in
//! [`kindling_sandbox::net`]) and the resolv.conf bound into every networked sandbox.
//!
//! Sandboxes have IPv4 egress only, through NAT, and never reach the host itself; so their DNS
//! servers are the host's IPv4 servers that are not on the host (a loopback resolver such as
//! systemd-resolved's 127.0.0.53 is replaced by the upstream servers it lists), unless the
//! operator names them.
//!
//! Networked sandboxes need `nft` (package nftables): the worker installs an nftables table named
//! after `cgroup_parent` at the first networked sandbox and removes it at shutdown (and at start,
//! after a crash). It turns IPv4 forwarding on then (`net.ipv4.ip_forward = 1`, machine-wide: the
//! host then routes between all its interfaces) and leaves it on.

use kindling_sandbox::net::{NetError, Network, Pool};
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where systemd-resolved lists the upstream servers behind its loopback stub.
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

/// What the worker needs for networked sandboxes.
pub struct Networking {
    pub network: Arc<Network>,
    /// The resolv.conf to bind at `/etc/resolv.conf` (None: the base has no such file to bind
    /// over, so sandboxes keep the base's name service setup).
    pub resolv_conf: Option<PathBuf>,
}

/// Networked sandboxes (`[network]`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// IPv4 range for sandboxes, a /30 each (host end .1, sandbox .2). It must not overlap a
    /// route of the host (networked sandboxes fail with a message if it does); workers sharing
    /// a range never hand out the same subnet.
    pub pool: String,
    /// IPv4 DNS servers for networked sandboxes' /etc/resolv.conf (empty: the host's IPv4
    /// non-loopback ones, from /etc/resolv.conf or systemd-resolved's upstream list).
    pub nameservers: Vec<std::net::Ipv4Addr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            pool: "10.231.0.0/16".into(),
            nameservers: Vec::new(),
        }
    }
}

/// Prepares networked sandboxes: cleans up after a crashed predecessor and writes
/// `<root>/network/resolv.conf`.
pub fn start(
    config: &NetworkConfig,
    cgroup_parent: &str,
    root: &Path,
    rootfs: &Path,
) -> Result<Networking, NetError> {
    let pool: Pool = config.pool.parse()?;
    let network = Arc::new(Network::open(cgroup_parent, pool)?);
    let target = rootfs.join("etc/resolv.conf");
    let resolv_conf = if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_file()) {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let upstream = std::fs::read_to_string(RESOLVED_UPSTREAM).ok();
        let text = resolv_conf(&host, upstream.as_deref(), &config.nameservers);
        if !text.contains("nameserver") {
            tracing::warn!(
                "the host has no IPv4 nameserver that networked sandboxes can reach; set \
                 [network] nameservers"
            );
        }
        let dir = root.join("network");
        let file = dir.join("resolv.conf");
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&file, text))
            .map_err(|source| NetError::Io {
                step: "writing the sandboxes' resolv.conf",
                source,
            })?;
        Some(file)
    } else {
        tracing::warn!(
            "the base has no /etc/resolv.conf file: networked sandboxes keep the base's DNS setup"
        );
        None
    };
    Ok(Networking {
        network,
        resolv_conf,
    })
}

/// Nameservers a sandbox can reach: IPv4, not on the host, not link-local.
fn reachable(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.parse::<Ipv4Addr>().ok()
        })
        .filter(|a| !a.is_loopback() && !a.is_link_local() && !a.is_unspecified())
        .collect()
}

/// The networked sandboxes' resolv.conf: the operator's nameservers, or the host's reachable
/// ones (else those behind a loopback stub, from `upstream`), with the host's `search` and
/// `options` lines.
pub fn resolv_conf(host: &str, upstream: Option<&str>, configured: &[Ipv4Addr]) -> String {
    let mut servers = configured.to_vec();
    if servers.is_empty() {
        servers = reachable(host);
    }
    if servers.is_empty() {
        servers = upstream.map(reachable).unwrap_or_default();
    }
    let mut out = String::from("# Written by Kindling for networked sandboxes.\n");
    for l in host.lines() {
        let first = l.split_whitespace().next();
        if matches!(first, Some("search" | "domain" | "options")) && l.len() <= 512 {
            out.push_str(l.trim());
            out.push('\n');
        }
    }
    for s in servers.iter().take(3) {
        out.push_str(&format!("nameserver {s}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_keeps_reachable_servers() {
        let host = "# comment\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\n\
                    nameserver fe80::1%eth0\nnameserver 169.254.169.253\nsearch example.org\n\
                    options edns0 trust-ad\nnameserver 192.0.2.53\n";
        let text = resolv_conf(host, None, &[]);
        assert_eq!(
            text,
            "# Written by Kindling for networked sandboxes.\nsearch example.org\n\
             options edns0 trust-ad\nnameserver 10.255.255.53\nnameserver 192.0.2.53\n"
        );
    }

    #[test]
    fn resolv_conf_looks_behind_a_loopback_stub() {
        let host = "nameserver 127.0.0.53\noptions edns0\n";
        let upstream = "nameserver 192.0.2.1\nnameserver 192.0.2.2\n";
        let text = resolv_conf(host, Some(upstream), &[]);
        assert!(
            text.contains("nameserver 192.0.2.1\nnameserver 192.0.2.2\n"),
            "{text}"
        );
        assert!(!text.contains("127.0.0.53"), "{text}");
        // Nothing reachable: no nameserver line at all.
        assert!(!resolv_conf(host, None, &[]).contains("nameserver"));
    }

    #[test]
    fn resolv_conf_prefers_the_operators_servers() {
        let text = resolv_conf(
            "nameserver 10.0.0.1\n",
            None,
            &[Ipv4Addr::new(192, 0, 2, 9)],
        );
        assert!(text.ends_with("nameserver 192.0.2.9\n"), "{text}");
        assert!(!text.contains("10.0.0.1"), "{text}");
    }
}
