//! Real contract files: the compatibility baseline's and con's own library.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::{Path, PathBuf};

use con_contracts::{ContractType, load_dir, parse_contract};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

#[test]
fn every_baseline_contract_file_parses() {
    let Some(parent) = workspace().parent().map(Path::to_path_buf) else {
        return;
    };
    let dir = parent.join("shared/seed/agent-runner/configs/default/contracts");
    if !dir.is_dir() {
        eprintln!("skipped: {} is absent", dir.display());
        return;
    }
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let c = parse_contract(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.kind, ContractType::Detective, "{}", path.display());
        assert!(!c.checks.is_empty());
        n += 1;
    }
    assert!(n >= 8, "only {n} baseline files");
}

#[test]
fn the_shipped_library_loads_whole() {
    let loaded = load_dir(&workspace().join("contracts")).unwrap();
    let errors: Vec<String> = loaded.broken.iter().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(loaded.contracts.len() >= 5, "{}", loaded.contracts.len());
}
