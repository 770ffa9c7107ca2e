//! Looking for processes a test expects to be gone.

/// Live (non-zombie) processes whose process group is `pgid`, as their
/// `/proc/<pid>/stat` lines. A zombie is dead already; whether it is reaped
/// depends on PID 1, which on test machines may not be an init.
pub fn live_in_group(pgid: i32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            found.push(stat);
        }
    }
    found
}

/// The shell's pid (its process group id), as a script's first line of
/// output printed it (`echo $$; …`).
pub fn pgid_of(output: &[u8]) -> i32 {
    let text = String::from_utf8_lossy(output);
    text.lines().next().unwrap().trim().parse().unwrap()
}
