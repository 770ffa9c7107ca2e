//! con's contract library (the repository's `contracts/`), built into the
//! binary so that `con bootstrap` installs the library of the con that
//! runs it, whatever profile it is given.

/// (path relative to the contracts directory, content, mode).
pub const CONTRACTS: &[(&str, &[u8], u32)] = &[
    (
        "CON-SYS-001.yaml",
        include_bytes!("../../../contracts/CON-SYS-001.yaml"),
        0o644,
    ),
    (
        "CON-SYS-002.yaml",
        include_bytes!("../../../contracts/CON-SYS-002.yaml"),
        0o644,
    ),
    (
        "CON-SYS-003.yaml",
        include_bytes!("../../../contracts/CON-SYS-003.yaml"),
        0o644,
    ),
    (
        "CON-SYS-004.yaml",
        include_bytes!("../../../contracts/CON-SYS-004.yaml"),
        0o644,
    ),
    (
        "CON-SYS-006.yaml",
        include_bytes!("../../../contracts/CON-SYS-006.yaml"),
        0o644,
    ),
    (
        "CON-AGENT-001.yaml",
        include_bytes!("../../../contracts/CON-AGENT-001.yaml"),
        0o644,
    ),
    (
        "CON-AGENT-002.yaml",
        include_bytes!("../../../contracts/CON-AGENT-002.yaml"),
        0o644,
    ),
    (
        "CON-PREV-001.yaml",
        include_bytes!("../../../contracts/CON-PREV-001.yaml"),
        0o644,
    ),
    (
        "CON-PREV-002.yaml",
        include_bytes!("../../../contracts/CON-PREV-002.yaml"),
        0o644,
    ),
    (
        "CON-PREV-003.yaml",
        include_bytes!("../../../contracts/CON-PREV-003.yaml"),
        0o644,
    ),
    (
        "CON-PREV-004.yaml",
        include_bytes!("../../../contracts/CON-PREV-004.yaml"),
        0o644,
    ),
    (
        "CON-PREV-005.yaml",
        include_bytes!("../../../contracts/CON-PREV-005.yaml"),
        0o644,
    ),
    (
        "CON-PREV-006.yaml",
        include_bytes!("../../../contracts/CON-PREV-006.yaml"),
        0o644,
    ),
    (
        "scripts/agent-dirs.sh",
        include_bytes!("../../../contracts/scripts/agent-dirs.sh"),
        0o755,
    ),
];

#[cfg(test)]
mod tests {
    /// Every file of the repository's library is listed, and nothing else.
    #[test]
    fn the_list_matches_the_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts");
        let mut on_disk = Vec::new();
        for sub in ["", "scripts"] {
            for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                if entry.file_type().unwrap().is_file() && name != "README.md" {
                    on_disk.push(if sub.is_empty() {
                        name
                    } else {
                        format!("{sub}/{name}")
                    });
                }
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = super::CONTRACTS
            .iter()
            .map(|(p, _, _)| (*p).to_owned())
            .collect();
        listed.sort();
        assert_eq!(listed, on_disk);
    }
}
