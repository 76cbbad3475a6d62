//! CRIU's own log (`dump.log`, `restore.log`), read for what a person
//! needs when it fails: its last errors, without the ones it logs on every
//! run here.

/// CRIU's last three error messages in `log`, joined; empty if none.
pub fn last_errors(log: &str) -> String {
    let errors: Vec<&str> = log
        .lines()
        .filter_map(|line| line.split_once("Error (").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once("): ").map(|(_, message)| message.trim()))
        // Logged on every run without CAP_SYS_RESOURCE, and harmless.
        .filter(|message| !message.starts_with("rlimit:"))
        .collect();
    errors[errors.len().saturating_sub(3)..].join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_lines_without_the_harmless_ones() {
        let log = "(00.001) 1: Warn (criu/x.c:1): ignored\n\
                   (00.001) 1: Error (criu/util.c:1): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
                   (00.002) 1: Error (criu/mount.c:10): mnt: No mapping for 42:/etc/hostname mountpoint\n\
                   (00.003) Error (criu/cr-restore.c:2): Restoring FAILED.\n";
        assert_eq!(
            last_errors(log),
            "mnt: No mapping for 42:/etc/hostname mountpoint; Restoring FAILED."
        );
        assert_eq!(last_errors("all well\n"), "");
    }
}
