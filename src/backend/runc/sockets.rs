//! Connected TCP sockets a container's processes hold, which CRIU refuses
//! to dump without `--tcp-established` ("Connected TCP socket, consider
//! using --tcp-established option", `criu/sk-inet.c`): found from /proc
//! before anything is paused, so that such a checkpoint is refused then,
//! not after the pod was frozen for nothing.

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
pub fn tcp(tables: &[String], inodes: &std::collections::HashSet<u64>) -> Vec<TcpSocket> {
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
    let numbers = |text: &str| -> (u32, u32) {
        let mut parts = text.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty());
        let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (next(), next())
    };
    numbers(release) < (6, 16) || numbers(engine_version) >= (4, 2)
}

/// The socket inodes process `pid` holds open.
pub fn socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
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
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .collect()
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
}
