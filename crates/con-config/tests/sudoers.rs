//! Every shipped sudoers drop-in passes `visudo -c`, and grants only NOPASSWD rules
//! to the agent user of its role.
//!
//! Needs visudo (Debian package `sudo`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use std::path::Path;
use std::process::Command;

#[test]
fn shipped_sudoers_files_are_valid() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut checked = 0;
    for profile in std::fs::read_dir(&configs).unwrap() {
        let dir = profile.unwrap().path().join("sudoers");
        if !dir.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let role = path.file_name().unwrap().to_str().unwrap().to_owned();
            // sudo skips drop-ins whose names contain '.' or end in '~'.
            assert!(
                !role.contains('.') && !role.ends_with('~'),
                "{}",
                path.display()
            );

            let out = Command::new("visudo")
                .arg("-cf")
                .arg(&path)
                .output()
                .unwrap_or_else(|e| panic!("cannot run visudo (install the sudo package): {e}"));
            assert!(
                out.status.success(),
                "{}: {}{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );

            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let prefix = format!("a-{role} ALL=(root) NOPASSWD: /");
                assert!(
                    line.starts_with(&prefix),
                    "{}: unexpected rule {line:?}",
                    path.display()
                );
                // A bare command (no arguments) would allow any arguments.
                let command = line.trim_start_matches(&prefix[..prefix.len() - 1]);
                assert!(
                    command.contains(' '),
                    "{}: {line:?} allows any arguments",
                    path.display()
                );
                assert!(!command.contains("ALL"), "{}: {line:?}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 1,
        "no sudoers files found under {}",
        configs.display()
    );
}
