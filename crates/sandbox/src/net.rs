//! Private, egress-only networks for sandboxes.
//!
//! Every sandbox has a network namespace of its own (the spawner always makes one). A networked
//! sandbox's namespace is joined to the host by a veth pair: `eth0` inside, `kl<subnet in hex>`
//! on the host, with a /30 of a configurable pool between them (the host end `.1`, the sandbox
//! `.2` with its default route through `.1`). The host forwards and masquerades what the sandbox
//! sends out. An nftables table owned by the worker (named after its `cgroup_parent`) makes that
//! path egress-only: nothing from a sandbox reaches the host itself (any of its addresses, so
//! neither the worker's API nor any other host service, whatever it binds), another sandbox,
//! link-local or multicast addresses, and nothing from outside reaches a sandbox but replies.
//!
//! A host-side name is derived from its subnet and created exclusively, so creating it claims
//! the subnet machine-wide: two workers with overlapping pools never hand out the same one. The
//! interface's alias names the worker that made it, so a worker restarted after a crash removes
//! exactly its predecessor's leftovers. The pair vanishes with the sandbox's namespace; a lease
//! deletes its host end at once anyway, so a subnet is free again when its sandbox is gone.
//!
//! The setup is a function of the sandbox's network namespace only ([`Network::connect`] takes a
//! namespace descriptor), not of how the sandbox was made: host root may move a veth end into a
//! namespace owned by any user namespace and configure it from there.

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::ffi::CString;
use std::fmt;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;

/// Prefix of every host-side interface Kindling creates (the nftables rules match on it).
pub const IF_PREFIX: &str = "kl";
/// The sandbox's end of its veth pair.
pub const SANDBOX_IF: &str = "eth0";
/// Prefix length of one sandbox's subnet: the host end and the sandbox.
const SUBNET_PREFIX: u8 = 30;
/// Most subnets one connect tries (others may be held by other workers or still vanishing).
const MAX_ATTEMPTS: usize = 64;

/// Errors setting up sandbox networks.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network pool `{pool}`: {reason}")]
    InvalidPool { pool: String, reason: &'static str },
    #[error("network pool {pool} overlaps the host's route to {route} on {dev}; choose a free range as `[network] pool`")]
    PoolInUse {
        pool: Pool,
        route: String,
        dev: String,
    },
    #[error("no free subnet in the network pool {0}")]
    Exhausted(Pool),
    #[error("networked sandboxes need the nft command (package nftables), which was not found")]
    NoNft,
    #[error("nft refused the sandbox network ruleset: {0}")]
    Nft(String),
    #[error("{step}")]
    Io {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

fn at(step: &'static str) -> impl FnOnce(io::Error) -> NetError {
    move |source| NetError::Io { step, source }
}

// --- addresses ---------------------------------------------------------------------------

/// An IPv4 range networked sandboxes take their /30 subnets from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    base: u32,
    prefix: u8,
}

/// Ranges a pool must not overlap: they mean something else to every host.
const RESERVED: &[(u32, u8, &str)] = &[
    (0x0000_0000, 8, "0.0.0.0/8"),
    (0x7f00_0000, 8, "127.0.0.0/8"),
    (0xa9fe_0000, 16, "169.254.0.0/16"),
    (0xe000_0000, 3, "224.0.0.0/3"),
];

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn overlaps(a: u32, a_prefix: u8, b: u32, b_prefix: u8) -> bool {
    let m = mask(a_prefix.min(b_prefix));
    a & m == b & m
}

impl FromStr for Pool {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = |reason| NetError::InvalidPool {
            pool: s.chars().take(64).collect(),
            reason,
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| bad("use a.b.c.d/len"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("not a prefix length"))?;
        if !(8..=SUBNET_PREFIX).contains(&prefix) {
            return Err(bad("the prefix length must be between 8 and 30"));
        }
        let base = u32::from(addr);
        if base & !mask(prefix) != 0 {
            return Err(bad("host bits are set"));
        }
        for &(net, len, _) in RESERVED {
            if overlaps(base, prefix, net, len) {
                return Err(bad(
                    "it overlaps 0.0.0.0/8, loopback, link-local or multicast",
                ));
            }
        }
        Ok(Pool { base, prefix })
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl Pool {
    /// How many sandbox subnets the pool holds.
    pub fn subnets(&self) -> u32 {
        1 << (SUBNET_PREFIX - self.prefix)
    }

    /// The `slot`th subnet (`slot < subnets()`).
    pub fn subnet(&self, slot: u32) -> Subnet {
        Subnet(self.base + (slot << (32 - SUBNET_PREFIX)))
    }

    /// Whether a route to `net/prefix` overlaps the pool.
    pub fn overlaps(&self, net: Ipv4Addr, prefix: u8) -> bool {
        overlaps(self.base, self.prefix, u32::from(net), prefix)
    }
}

/// One sandbox's /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet(u32);

impl Subnet {
    /// The host end's address: the sandbox's gateway.
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.0 + 1)
    }

    /// The sandbox's address.
    pub fn sandbox(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.0 + 2)
    }

    /// The host-side interface name: the prefix and the subnet in hex (10 bytes, under IFNAMSIZ).
    pub fn interface(&self) -> String {
        format!("{IF_PREFIX}{:08x}", self.0)
    }
}

/// Which subnets of a pool this worker holds; hands them out next-fit, so a just-freed subnet
/// (whose interface may still be vanishing with its namespace) is the last to be taken again.
#[derive(Debug)]
struct Slots {
    len: u32,
    next: u32,
    used: BTreeSet<u32>,
}

impl Slots {
    fn new(len: u32) -> Self {
        Self {
            len,
            next: 0,
            used: BTreeSet::new(),
        }
    }

    fn take(&mut self) -> Option<u32> {
        if self.used.len() as u64 >= u64::from(self.len) {
            return None;
        }
        let mut slot = self.next;
        while self.used.contains(&slot) {
            slot = (slot + 1) % self.len;
        }
        self.used.insert(slot);
        self.next = (slot + 1) % self.len;
        Some(slot)
    }

    fn release(&mut self, slot: u32) {
        self.used.remove(&slot);
    }
}

// --- the ruleset -------------------------------------------------------------------------

/// The nftables table of the worker whose `cgroup_parent` is `owner`. Characters nft would not
/// take in a name are replaced, with a hash of the original appended so distinct owners keep
/// distinct tables.
pub fn table_name(owner: &str) -> String {
    let clean: String = owner
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    if clean == owner {
        format!("kindling-{clean}")
    } else {
        // FNV-1a: stable across builds, which std's hasher is not promised to be.
        let hash = owner.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("kindling-{clean}-{:08x}", hash as u32)
    }
}

/// An nft script replacing `table` (if it exists) by the sandbox network rules for `pool`, in
/// one transaction.
pub fn ruleset(table: &str, pool: &Pool) -> String {
    let p = IF_PREFIX;
    format!(
        r#"add table inet {table}
delete table inet {table}
table inet {table} {{
	# Nothing from a sandbox is for the host itself: none of its addresses, on any interface.
	chain input {{
		type filter hook input priority filter; policy accept;
		iifname "{p}*" drop
	}}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		iifname "{p}*" jump from_sandbox
		oifname "{p}*" jump to_sandbox
	}}
	chain from_sandbox {{
		oifname "{p}*" drop
		meta nfproto ipv6 drop
		# A source not routed back through the interface it came in on is spoofed. (Not a
		# check against this worker's pool: other workers' sandboxes pass here too.)
		fib saddr . iif oif missing drop
		ip daddr {{ 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3 }} drop
		accept
	}}
	# Egress only: from outside, replies and nothing else.
	chain to_sandbox {{
		ct state established,related accept
		drop
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr {pool} oifname != "{p}*" masquerade
	}}
}}
"#
    )
}

/// An nft script deleting `table` if it exists.
pub fn removal(table: &str) -> String {
    format!("add table inet {table}\ndelete table inet {table}\n")
}

/// The `nft` binary: on PATH, or where Debian puts it (PATH may lack sbin).
fn find_nft() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

fn run_nft(nft: &Path, script: &str) -> Result<(), NetError> {
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(at("running nft"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(at("writing to nft"))?;
    }
    let out = child.wait_with_output().map_err(at("running nft"))?;
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stderr);
        Err(NetError::Nft(text.trim().chars().take(512).collect()))
    }
}

// --- host state --------------------------------------------------------------------------

/// IPv4 routes of the host as (destination, prefix length, device), from `/proc/net/route`.
fn host_routes() -> io::Result<Vec<(Ipv4Addr, u8, String)>> {
    let text = std::fs::read_to_string("/proc/net/route")?;
    Ok(parse_routes(&text))
}

fn parse_routes(text: &str) -> Vec<(Ipv4Addr, u8, String)> {
    // Addresses are printed as the hex of the in-memory (network order) word.
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = word(f.get(1)?)?;
            let mask = word(f.get(7)?)?;
            Some((
                Ipv4Addr::from(dest),
                u32::from_be_bytes(mask).leading_ones() as u8,
                f[0].to_string(),
            ))
        })
        .collect()
}

/// Turns IPv4 forwarding on if it is off (machine-wide). Says whether it changed anything.
pub fn enable_forwarding() -> io::Result<bool> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path)?.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(path, "1")?;
    Ok(true)
}

/// Host interfaces Kindling made whose alias is `alias`: (name, index).
fn interfaces_with_alias(alias: &str) -> Vec<(String, u32)> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if !name.starts_with(IF_PREFIX) {
                return None;
            }
            let path = e.path();
            let own = std::fs::read_to_string(path.join("ifalias")).ok()?;
            if own.trim_end_matches('\n') != alias {
                return None;
            }
            let index = std::fs::read_to_string(path.join("ifindex")).ok()?;
            Some((name, index.trim().parse().ok()?))
        })
        .collect()
}

/// A descriptor of the network namespace of the process behind `pidfd` (whose pid in our pid
/// namespace is `pid`). Opened by pid, then checked against the pidfd, so a reused pid cannot
/// hand us another process's namespace.
pub fn netns_of(pidfd: BorrowedFd<'_>, pid: i32) -> io::Result<OwnedFd> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    // SAFETY: pidfd_send_signal with signal 0 (an existence check), a null siginfo and no flags;
    // `pidfd` is a valid descriptor borrowed for the call.
    let alive = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if alive == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(ns))
}

/// Runs `f` on a short-lived thread that has entered the network namespace `netns`: threads
/// may switch network namespaces alone, and this one never goes back, so no other code of the
/// process can ever run in a sandbox's namespace by mistake.
fn in_netns<T: Send>(
    netns: BorrowedFd<'_>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let fd = netns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns with a namespace descriptor the caller keeps open for the call and
            // a constant flag; it only changes this thread's network namespace.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == -1 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("network setup thread panicked")))
    })
}

/// The index of interface `name` in the calling thread's network namespace.
fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

// --- rtnetlink ---------------------------------------------------------------------------

// From <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/veth.h>.
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 1;

/// One rtnetlink request under construction: header, fixed part, attributes.
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(ty: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, set by finish
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        Self { buf }
    }

    /// `struct ifinfomsg`.
    fn ifinfo(mut self, index: u32, flags: u32) -> Self {
        push_ifinfo(&mut self.buf, index, flags);
        self
    }

    fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn push_ifinfo(buf: &mut Vec<u8>, index: u32, flags: u32) {
    buf.push(libc::AF_UNSPEC as u8);
    buf.push(0);
    buf.extend_from_slice(&0u16.to_ne_bytes()); // device type
    buf.extend_from_slice(&index.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes()); // change mask: the flags we set
}

fn pad(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    pad(buf);
}

fn attr_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut data = s.as_bytes().to_vec();
    data.push(0);
    attr(buf, ty, &data);
}

/// Starts a nested attribute; returns where its header is, for [`nest_end`].
fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    at
}

fn nest_end(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// An rtnetlink socket in the calling thread's network namespace.
struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The kernel answers at once; a bound on the wait keeps a surprise from hanging us.
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO reads a `struct timeval` of the given size, which `timeout` is.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if ret == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    /// Sends one request and waits for the kernel's acknowledgement (or its error).
    fn call(&mut self, msg: Message) -> io::Result<()> {
        self.seq += 1;
        let seq = self.seq;
        let data = msg.finish(seq);
        // SAFETY: sockaddr_nl is plain data; all-zero is valid and addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `data` is readable for its whole length and `kernel` is a sockaddr_nl of the
        // given size, both for the duration of the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                data.as_ptr() as *const libc::c_void,
                data.len(),
                0,
                &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent == -1 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf)?;
            if let Some(result) = ack_of(&buf[..n], seq) {
                return result;
            }
        }
    }

    /// Creates a veth pair: `host` here (up), `peer` (down) in the namespace `netns`. Fails with
    /// `EEXIST` if `host` exists.
    fn add_veth(&mut self, host: &str, peer: &str, netns: RawFd) -> io::Result<()> {
        let mut m = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL).ifinfo(0, IFF_UP);
        let b = m.bytes();
        attr_str(b, IFLA_IFNAME, host);
        let info = nest_start(b, IFLA_LINKINFO);
        attr(b, IFLA_INFO_KIND, b"veth");
        let data = nest_start(b, IFLA_INFO_DATA);
        let p = nest_start(b, VETH_INFO_PEER);
        // Down: a veth end cannot come up before its pair is complete (ENOTCONN).
        push_ifinfo(b, 0, 0);
        attr_str(b, IFLA_IFNAME, peer);
        attr(b, IFLA_NET_NS_FD, &(netns as u32).to_ne_bytes());
        nest_end(b, p);
        nest_end(b, data);
        nest_end(b, info);
        self.call(m)
    }

    /// Sets the alias of link `index` (the kernel ignores one given when a link is created).
    fn set_alias(&mut self, index: u32, alias: &str) -> io::Result<()> {
        let mut m = Message::new(RTM_NEWLINK, 0).ifinfo(index, 0);
        attr_str(m.bytes(), IFLA_IFALIAS, alias);
        self.call(m)
    }

    fn set_up(&mut self, index: u32) -> io::Result<()> {
        self.call(Message::new(RTM_NEWLINK, 0).ifinfo(index, IFF_UP))
    }

    fn delete_link(&mut self, index: u32) -> io::Result<()> {
        self.call(Message::new(RTM_DELLINK, 0).ifinfo(index, 0))
    }

    /// Deletes a link by name: only for one just created, whose name cannot be another's yet.
    fn delete_link_named(&mut self, name: &str) -> io::Result<()> {
        let mut m = Message::new(RTM_DELLINK, 0).ifinfo(0, 0);
        attr_str(m.bytes(), IFLA_IFNAME, name);
        self.call(m)
    }

    fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut m = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        let b = m.bytes();
        b.extend_from_slice(&[libc::AF_INET as u8, prefix, 0, RT_SCOPE_UNIVERSE]);
        b.extend_from_slice(&index.to_ne_bytes());
        attr(b, IFA_LOCAL, &addr.octets());
        attr(b, IFA_ADDRESS, &addr.octets());
        self.call(m)
    }

    fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut m = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        let b = m.bytes();
        b.extend_from_slice(&[
            libc::AF_INET as u8,
            0, // destination prefix: the default route
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
        ]);
        b.extend_from_slice(&0u32.to_ne_bytes());
        attr(b, RTA_GATEWAY, &gateway.octets());
        attr(b, RTA_OIF, &index.to_ne_bytes());
        self.call(m)
    }
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is writable for its whole length for the duration of the call.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The acknowledgement of request `seq` among the messages in `data`, if there is one.
fn ack_of(data: &[u8], seq: u32) -> Option<io::Result<()>> {
    let u32_at = |i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(data.get(i..i + 4)?.try_into().ok()?))
    };
    let mut off = 0;
    while off + 16 <= data.len() {
        let len = u32_at(off)? as usize;
        let ty = u16::from_ne_bytes(data.get(off + 4..off + 6)?.try_into().ok()?);
        if len < 16 {
            return Some(Err(io::Error::other("malformed netlink reply")));
        }
        if ty == NLMSG_ERROR && u32_at(off + 8)? == seq {
            let code = u32_at(off + 16)? as i32;
            return Some(if code == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-code))
            });
        }
        off += (len + 3) & !3;
    }
    None
}

// --- the network -------------------------------------------------------------------------

/// The sandbox networks of one worker.
pub struct Network {
    pool: Pool,
    table: String,
    alias: String,
    nft: Option<PathBuf>,
    slots: Arc<Mutex<Slots>>,
    /// Whether this worker's ruleset is installed (it is, from the first networked sandbox on).
    installed: Mutex<bool>,
    /// A host route overlapping the pool, found at start (route, device): no sandbox can be
    /// connected then.
    conflict: Option<(String, String)>,
}

/// A networked sandbox's hold on its subnet; dropping it frees the subnet. The veth pair goes
/// with the sandbox's network namespace (deleting it here instead would cost an RCU grace
/// period, some 20 ms, on every sandbox's way out); until it has, its name keeps the subnet from
/// being handed out again, and subnets are taken next-fit, so the freed one is the last in line.
pub struct NetLease {
    slot: u32,
    subnet: Subnet,
    slots: Arc<Mutex<Slots>>,
}

impl fmt::Debug for NetLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NetLease({} {})",
            self.subnet.interface(),
            self.address()
        )
    }
}

impl NetLease {
    /// The sandbox's address.
    pub fn address(&self) -> Ipv4Addr {
        self.subnet.sandbox()
    }

    /// The host end of the sandbox's veth pair.
    pub fn host_interface(&self) -> String {
        self.subnet.interface()
    }
}

impl Drop for NetLease {
    fn drop(&mut self) {
        self.slots.lock().release(self.slot);
    }
}

impl Network {
    /// Prepares the sandbox networks of the worker whose `cgroup_parent` is `owner`: removes
    /// what a crashed predecessor left (its host-side interfaces and its nftables table) and
    /// checks that no host route overlaps `pool` (if one does, the worker runs, but networked
    /// sandboxes fail with that error). Installs nothing until the first [`Network::connect`].
    pub fn open(owner: &str, pool: Pool) -> Result<Self, NetError> {
        let alias = format!("kindling {owner}");
        let mut net = Self {
            pool,
            table: table_name(owner),
            alias,
            nft: find_nft(),
            slots: Arc::new(Mutex::new(Slots::new(pool.subnets()))),
            installed: Mutex::new(false),
            conflict: None,
        };
        let stale = net.remove_interfaces();
        if stale > 0 {
            tracing::warn!(
                count = stale,
                "removed sandbox interfaces left behind by a previous worker"
            );
        }
        let routes = host_routes().map_err(at("reading the host's routes"))?;
        net.conflict = routes
            .into_iter()
            .find(|(dest, prefix, dev)| {
                *prefix > 0 && !dev.starts_with(IF_PREFIX) && pool.overlaps(*dest, *prefix)
            })
            .map(|(dest, prefix, dev)| (format!("{dest}/{prefix}"), dev));
        if let Err(e) = net.usable() {
            tracing::warn!("{e}: networked sandboxes (and package installs) will fail");
        }
        match &net.nft {
            // Not fatal: the worker serves offline sandboxes without it.
            Some(nft) => {
                if let Err(e) = run_nft(nft, &removal(&net.table)) {
                    tracing::warn!(table = %net.table, "removing a stale ruleset: {e}");
                }
            }
            None => tracing::warn!(
                "nft (package nftables) not found: networked sandboxes (and package installs) \
                 will fail"
            ),
        }
        Ok(net)
    }

    /// Connects the network namespace `netns` (of a sandbox whose first instance has not started)
    /// to the host: a veth pair, addresses, the sandbox's default route, and on first use the
    /// ruleset and IPv4 forwarding. Blocking, about a millisecond.
    pub fn connect(&self, netns: BorrowedFd<'_>) -> Result<NetLease, NetError> {
        self.usable()?;
        self.install()?;
        let mut nl = Netlink::open().map_err(at("opening rtnetlink"))?;
        let mut busy = Vec::new();
        let claimed = (|| {
            for _ in 0..MAX_ATTEMPTS {
                let slot = self
                    .slots
                    .lock()
                    .take()
                    .ok_or(NetError::Exhausted(self.pool))?;
                let subnet = self.pool.subnet(slot);
                let name = subnet.interface();
                match nl.add_veth(&name, SANDBOX_IF, netns.as_raw_fd()) {
                    Ok(()) => return Ok((slot, subnet)),
                    // Another worker's, or one still vanishing with its namespace.
                    Err(e)
                        if e.raw_os_error() == Some(libc::EEXIST)
                            && Path::new("/sys/class/net").join(&name).exists() =>
                    {
                        busy.push(slot)
                    }
                    Err(e) => {
                        busy.push(slot);
                        return Err(at("creating a veth pair")(e));
                    }
                }
            }
            Err(NetError::Exhausted(self.pool))
        })();
        {
            let mut slots = self.slots.lock();
            for s in busy {
                slots.release(s);
            }
        }
        let (slot, subnet) = claimed?;
        // From here a failure drops the lease (freeing the subnet) and deletes the pair.
        let lease = NetLease {
            slot,
            subnet,
            slots: self.slots.clone(),
        };
        let name = subnet.interface();
        let index = ifindex(&name).map_err(|e| {
            let _ = nl.delete_link_named(&name);
            at("finding the host end of a veth pair")(e)
        })?;
        let configured = (|| {
            nl.set_alias(index, &self.alias)
                .map_err(at("naming the host end of a veth pair"))?;
            nl.add_address(index, subnet.host(), SUBNET_PREFIX)
                .map_err(at("addressing the host end of a veth pair"))?;
            in_netns(netns, || {
                let inside = ifindex(SANDBOX_IF)?;
                let mut nl = Netlink::open()?;
                nl.set_up(inside)?;
                nl.add_address(inside, subnet.sandbox(), SUBNET_PREFIX)?;
                nl.add_default_route(inside, subnet.host())
            })
            .map_err(at("configuring the sandbox's end of a veth pair"))
        })();
        if let Err(e) = configured {
            let _ = nl.delete_link(index);
            return Err(e);
        }
        Ok(lease)
    }

    /// Whether sandboxes can be connected: not when a host route overlaps the pool.
    fn usable(&self) -> Result<(), NetError> {
        match &self.conflict {
            Some((route, dev)) => Err(NetError::PoolInUse {
                pool: self.pool,
                route: route.clone(),
                dev: dev.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Installs the ruleset and turns IPv4 forwarding on, once.
    fn install(&self) -> Result<(), NetError> {
        let mut installed = self.installed.lock();
        if *installed {
            return Ok(());
        }
        let nft = self.nft.as_ref().ok_or(NetError::NoNft)?;
        run_nft(nft, &ruleset(&self.table, &self.pool))?;
        if enable_forwarding().map_err(at("turning IPv4 forwarding on"))? {
            tracing::info!(
                "turned IPv4 forwarding on (net.ipv4.ip_forward = 1, machine-wide) for \
                 networked sandboxes; Kindling leaves it on"
            );
        }
        tracing::info!(table = %self.table, pool = %self.pool, "sandbox network rules installed");
        *installed = true;
        Ok(())
    }

    /// Removes this worker's host-side interfaces; returns how many there were.
    fn remove_interfaces(&self) -> usize {
        let found = interfaces_with_alias(&self.alias);
        if found.is_empty() {
            return 0;
        }
        match Netlink::open() {
            Ok(mut nl) => {
                for (name, index) in &found {
                    if let Err(e) = nl.delete_link(*index) {
                        tracing::warn!(interface = %name, "removing a sandbox interface: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("cannot open rtnetlink to remove interfaces: {e}"),
        }
        found.len()
    }

    /// Removes this worker's ruleset (at shutdown, after its sandboxes are gone; their veth
    /// pairs go with their namespaces).
    pub fn close(&self) {
        let mut installed = self.installed.lock();
        if let Some(nft) = &self.nft {
            if let Err(e) = run_nft(nft, &removal(&self.table)) {
                tracing::warn!(table = %self.table, "removing sandbox network rules: {e}");
            }
        }
        *installed = false;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_and_refuse() {
        let p: Pool = "10.231.0.0/16".parse().unwrap();
        assert_eq!(p.to_string(), "10.231.0.0/16");
        assert_eq!(p.subnets(), 16384);
        assert_eq!(p.subnet(0).host(), Ipv4Addr::new(10, 231, 0, 1));
        assert_eq!(p.subnet(0).sandbox(), Ipv4Addr::new(10, 231, 0, 2));
        assert_eq!(p.subnet(1).host(), Ipv4Addr::new(10, 231, 0, 5));
        assert_eq!(p.subnet(16383).sandbox(), Ipv4Addr::new(10, 231, 255, 254));
        assert_eq!(p.subnet(1).interface(), "kl0ae70004");
        assert!(p.subnet(16383).interface().len() < libc::IFNAMSIZ);
        let one: Pool = "192.168.7.4/30".parse().unwrap();
        assert_eq!(one.subnets(), 1);
        for bad in [
            "10.231.0.0",
            "10.231.0.1/16",
            "10.0.0.0/7",
            "10.0.0.0/31",
            "127.1.0.0/16",
            "169.254.0.0/16",
            "224.0.0.0/8",
            "240.0.0.0/8",
            "0.0.0.0/8",
            "10.0.0.0/x",
            "fd00::/64",
        ] {
            assert!(bad.parse::<Pool>().is_err(), "{bad}");
        }
        let long = "9".repeat(10_000);
        let msg = long.parse::<Pool>().unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn overlap() {
        let p: Pool = "10.231.0.0/16".parse().unwrap();
        assert!(p.overlaps(Ipv4Addr::new(10, 0, 0, 0), 8));
        assert!(p.overlaps(Ipv4Addr::new(10, 231, 7, 0), 24));
        assert!(!p.overlaps(Ipv4Addr::new(10, 232, 0, 0), 16));
        assert!(!p.overlaps(Ipv4Addr::new(192, 0, 2, 0), 24));
    }

    #[test]
    fn slots_are_next_fit_and_bounded() {
        let mut s = Slots::new(3);
        assert_eq!(s.take(), Some(0));
        assert_eq!(s.take(), Some(1));
        s.release(0);
        // A freed subnet is taken last.
        assert_eq!(s.take(), Some(2));
        assert_eq!(s.take(), Some(0));
        assert_eq!(s.take(), None);
        s.release(1);
        assert_eq!(s.take(), Some(1));
        assert_eq!(s.take(), None);
    }

    #[test]
    fn table_names() {
        assert_eq!(table_name("kindling"), "kindling-kindling");
        assert_eq!(table_name("kindling-e2e-1-2"), "kindling-kindling-e2e-1-2");
        let a = table_name("a b");
        let b = table_name("a_b");
        assert_ne!(a, b);
        assert!(a.starts_with("kindling-a_b-"), "{a}");
        assert!(table_name(&"x".repeat(300)).len() < 256);
        assert!(table_name("\"; flush ruleset")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }

    #[test]
    fn ruleset_text() {
        let p: Pool = "10.231.0.0/16".parse().unwrap();
        let r = ruleset("kindling-k", &p);
        // Replaces the table atomically, so a crashed predecessor's rules never double up.
        assert!(r.starts_with(
            "add table inet kindling-k\ndelete table inet kindling-k\ntable inet kindling-k {"
        ));
        for rule in [
            "type filter hook input priority filter; policy accept;\n\t\tiifname \"kl*\" drop",
            "iifname \"kl*\" jump from_sandbox",
            "oifname \"kl*\" jump to_sandbox",
            "oifname \"kl*\" drop",
            "meta nfproto ipv6 drop",
            "fib saddr . iif oif missing drop",
            "169.254.0.0/16",
            "224.0.0.0/3",
            "127.0.0.0/8",
            "ct state established,related accept\n\t\tdrop",
            "ip saddr 10.231.0.0/16 oifname != \"kl*\" masquerade",
        ] {
            assert!(r.contains(rule), "missing `{rule}` in\n{r}");
        }
        assert_eq!(r.matches('{').count(), r.matches('}').count());
        // Every worker's rules see every worker's sandboxes: only NAT names a pool.
        assert_eq!(r.matches("10.231.0.0/16").count(), 1, "{r}");
        assert_eq!(
            removal("kindling-k"),
            "add table inet kindling-k\ndelete table inet kindling-k\n"
        );
    }

    #[test]
    fn routes_parse() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    kl0ae70000\t0000E70A\t00000000\t0001\t0\t0\t0\tFCFFFFFF\t0\t0\t0\n";
        let routes = parse_routes(text);
        assert_eq!(
            routes,
            vec![
                (Ipv4Addr::new(0, 0, 0, 0), 0, "eth0".to_string()),
                (Ipv4Addr::new(192, 0, 2, 0), 24, "eth0".to_string()),
                (Ipv4Addr::new(10, 231, 0, 0), 30, "kl0ae70000".to_string()),
            ]
        );
    }

    #[test]
    fn netlink_messages() {
        let mut m = Message::new(RTM_NEWADDR, NLM_F_CREATE).ifinfo(7, IFF_UP);
        attr_str(m.bytes(), IFLA_IFNAME, "abc");
        let n = nest_start(m.bytes(), IFLA_LINKINFO);
        attr(m.bytes(), IFLA_INFO_KIND, b"veth");
        nest_end(m.bytes(), n);
        let buf = m.finish(9);
        assert_eq!(buf.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize,
            buf.len()
        );
        assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), 9);
        // ifinfomsg index after the 16-byte header and 4 bytes of family/type.
        assert_eq!(u32::from_ne_bytes(buf[20..24].try_into().unwrap()), 7);
        // The nest's length covers its one attribute (4 + 4 bytes).
        let nest = 16 + 16 + 8;
        assert_eq!(
            u16::from_ne_bytes(buf[nest..nest + 2].try_into().unwrap()),
            12
        );
        // Acknowledgements: success, an errno, another request's, truncated.
        let ack = |seq: u32, code: i32| {
            let mut b = Vec::new();
            b.extend_from_slice(&36u32.to_ne_bytes());
            b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            b.extend_from_slice(&0u16.to_ne_bytes());
            b.extend_from_slice(&seq.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&code.to_ne_bytes());
            b.extend_from_slice(&[0u8; 16]);
            b
        };
        assert!(matches!(ack_of(&ack(3, 0), 3), Some(Ok(()))));
        let e = ack_of(&ack(3, -libc::EEXIST), 3).unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert!(ack_of(&ack(2, 0), 3).is_none());
        assert!(ack_of(&ack(3, 0)[..10], 3).is_none());
    }
}
