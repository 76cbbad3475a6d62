//! Connected TCP sockets a container's processes hold, which CRIU refuses
//! to dump without `--tcp-established` ("Connected TCP socket, consider
//! using --tcp-established option", `criu/sk-inet.c`): found from /proc
//! before anything is paused, so that such a checkpoint is refused then,
//! not after the pod was frozen for nothing. And whether CRIU's network
//! lock would guard anything at all, so that a container without TCP
//! sockets is dumped without it.

use std::collections::HashSet;

/// TCP states that CRIU dumps only with `--tcp-established` (the kernel's
/// numbering, as /proc/net/tcp shows it): ESTABLISHED, SYN_SENT,
/// FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING.
const CONNECTED: [&str; 7] = ["01", "02", "04", "05", "08", "09", "0B"];

/// One connection, for a person: `local → remote` as /proc shows them.
fn describe(local: &str, remote: &str) -> String {
    format!("{} → {}", address(local), address(remote))
}

/// `0100007F:1F90` (little-endian IPv4, hex port) as `127.0.0.1:8080`;
/// IPv6 is left as the kernel writes it.
fn address(hex: &str) -> String {
    let Some((ip, port)) = hex.split_once(':') else {
        return hex.to_owned();
    };
    let port = u16::from_str_radix(port, 16).map_or_else(|_| port.to_owned(), |p| p.to_string());
    match u32::from_str_radix(ip, 16) {
        Ok(v4) if ip.len() == 8 => format!("{}:{port}", std::net::Ipv4Addr::from(v4.swap_bytes())),
        _ => format!("[{ip}]:{port}"),
    }
}

/// A TCP socket among a container's, from /proc/PID/net/tcp or tcp6.
pub struct TcpSocket {
    /// `local → remote`, for a person.
    pub description: String,
    /// Connected, as CRIU dumps only with `--tcp-established`.
    pub connected: bool,
}

/// The TCP sockets among `inodes` (the sockets a container's processes
/// hold), from the text of /proc/PID/net/tcp and tcp6 of its network
/// namespace.
pub fn tcp(tables: &[String], inodes: &HashSet<u64>) -> Vec<TcpSocket> {
    tables
        .iter()
        .flat_map(|table| table.lines().skip(1))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state, inode) = (fields.get(1)?, fields.get(2)?, fields.get(3)?, fields.get(9)?);
            let inode: u64 = inode.parse().ok()?;
            inodes.contains(&inode).then(|| TcpSocket {
                description: describe(local, remote),
                connected: CONNECTED.contains(state),
            })
        })
        .collect()
}

/// Whether CRIU `engine_version` can save TCP sockets at all on kernel
/// `release`: from 6.16 the kernel refuses SO_PASSSEC on them, which CRIU
/// asked for until 4.2 ("sockets: Can't get 1:34 opt: Operation not
/// supported", seen here with 4.1.1 on 6.18 for a listening socket alone).
pub fn engine_saves_tcp(engine_version: &str, release: &str) -> bool {
    major_minor(release) < (6, 16) || major_minor(engine_version) >= (4, 2)
}

/// The first two numbers of a version or kernel release (`6.18.44-fc` is
/// (6, 18)); a missing one is 0.
fn major_minor(text: &str) -> (u32, u32) {
    let mut parts = text.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty());
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// Whether CRIU `engine_version` takes `network-lock skip` (3.18 and
/// later; older ones refuse the word and would fail the dump).
pub fn engine_skips_network_lock(engine_version: &str) -> bool {
    major_minor(engine_version) >= (3, 18)
}

/// Tables of sockets CRIU's network lock does nothing for, with the column
/// that holds each socket's inode. The lock (iptables or nftables rules in
/// the network namespace, for the whole dump) exists so that a TCP peer
/// hears nothing, no RST above all, while its connection is being saved;
/// datagram, raw, Unix, netlink and packet sockets have no such state.
const UNGUARDED: [(&str, usize); 11] = [
    ("unix", 6),
    ("udp", 9),
    ("udp6", 9),
    ("udplite", 9),
    ("udplite6", 9),
    ("raw", 9),
    ("raw6", 9),
    ("icmp", 9),
    ("icmp6", 9),
    ("netlink", 9),
    ("packet", 8),
];

/// Whether CRIU's network lock would guard nothing of the container whose
/// first process is `init`: its processes hold no socket other than the
/// kinds in `UNGUARDED`, in its network namespace. A socket found in none
/// of those tables (TCP, MPTCP, SCTP, or one in another namespace) keeps
/// the lock. Asked while the container is frozen, so no socket can appear
/// between the answer and the dump.
pub fn network_lock_guards_nothing(init: u32) -> bool {
    let inodes = container_socket_inodes(init);
    if inodes.is_empty() {
        return true;
    }
    let tables: Vec<(String, usize)> = UNGUARDED
        .iter()
        .filter_map(|(name, column)| Some((net_table(init, name)?, *column)))
        .collect();
    all_unguarded(&inodes, &tables)
}

/// Whether every one of `inodes` is listed in one of `tables` (a table's
/// text and its inode column).
fn all_unguarded(inodes: &HashSet<u64>, tables: &[(String, usize)]) -> bool {
    let listed: HashSet<u64> = tables
        .iter()
        .flat_map(|(text, column)| {
            text.lines()
                .skip(1)
                .filter_map(move |line| line.split_whitespace().nth(*column)?.parse().ok())
        })
        .collect();
    inodes.is_subset(&listed)
}

/// The socket inodes held by the processes CRIU would capture with the
/// container whose first process is `init`.
pub fn container_socket_inodes(init: u32) -> HashSet<u64> {
    super::tree::captured(init, &super::tree::Proc)
        .into_iter()
        .flat_map(socket_inodes)
        .collect()
}

/// The socket inodes process `pid` holds open.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// /proc/PID/net/tcp and tcp6, as `pid`'s network namespace has them.
pub fn tables(pid: u32) -> Vec<String> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| net_table(pid, table))
        .collect()
}

/// The text of /proc/PID/net/NAME: the sockets of `pid`'s network
/// namespace, of one kind; `None` if the kernel has no such table.
fn net_table(pid: u32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/net/{name}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_containers_tcp_sockets_are_found_and_named() {
        // As /proc/net/tcp shows a listener, an established connection to
        // it (both ends), and a connection of another process.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:04D2 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0 100 0 0 10 0\n\
   1: 0100007F:04D2 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 101 1 0 20 4 30 10 -1\n\
   2: 0100007F:9C40 0100007F:04D2 01 00000000:00000000 00:00000000 00000000     0        0 102 1 0 20 4 30 10 -1\n\
   3: 0100007F:1F90 0100007F:9C41 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0 20 4 30 10 -1\n";
        let found = tcp(&[table.to_string()], &[100, 101, 102].into_iter().collect());
        let connected: Vec<&str> = found
            .iter()
            .filter(|s| s.connected)
            .map(|s| s.description.as_str())
            .collect();
        assert_eq!(
            connected,
            ["127.0.0.1:1234 → 127.0.0.1:40000", "127.0.0.1:40000 → 127.0.0.1:1234"]
        );
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].description, "0.0.0.0:1234 → 0.0.0.0:0");
        assert!(tcp(&[table.to_string()], &[7].into_iter().collect()).is_empty());
    }

    #[test]
    fn criu_before_4_2_cannot_save_tcp_sockets_from_kernel_6_16() {
        assert!(!engine_saves_tcp("4.1.1", "6.18.44-fc-v1147"));
        assert!(engine_saves_tcp("4.2.1", "6.18.44"));
        assert!(engine_saves_tcp("4.1.1", "6.15.2"));
        assert!(engine_saves_tcp("5.0", "7.1.0"));
    }

    #[test]
    fn the_network_lock_is_needed_for_any_socket_not_known_to_be_unguarded() {
        // /proc/net/unix and /proc/net/udp as the kernel writes them.
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n\
ffff8d4b0b9b4c00: 00000002 00000000 00010000 0001 01 300 /run/app.sock\n";
        let udp = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  123: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 301 2 0 0\n";
        let tables = [(unix.to_owned(), 6), (udp.to_owned(), 9)];
        assert!(all_unguarded(&[300, 301].into_iter().collect(), &tables));
        // 302 is in neither: a TCP socket, or one the tables do not show.
        assert!(!all_unguarded(&[300, 302].into_iter().collect(), &tables));
        assert!(all_unguarded(&HashSet::new(), &tables));
    }

    #[test]
    fn criu_skips_the_network_lock_from_3_18() {
        assert!(engine_skips_network_lock("4.1.1"));
        assert!(engine_skips_network_lock("3.18"));
        assert!(!engine_skips_network_lock("3.17.1"));
        assert!(!engine_skips_network_lock(""));
    }
}
