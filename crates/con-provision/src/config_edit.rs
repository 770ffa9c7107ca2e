//! Editing the installed `con.toml` without losing what a human wrote in it,
//! and finding where each setting is written.
//!
//! `con commission` and `con decommission` change exactly one `[[agents]]`
//! entry; everything else (comments, blank lines, key order, quoting) is
//! kept byte for byte, through `toml_edit`. [`write_config`] replaces the
//! file atomically with its owner and mode kept. [`ConfigLines`] maps the
//! keys `con policy explain` cites to their line numbers.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use con_config::Tier;
use toml_edit::{Array, DocumentMut, Item, Table, value};

use crate::ProvisionError;

/// The `[[agents]]` entry `con commission` adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAgent {
    /// Agent name (validated by the caller with `con_config::validate_agent_name`).
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// Its roles, in order.
    pub roles: Vec<String>,
}

fn parse_mut(text: &str, origin: &Path) -> Result<DocumentMut, ProvisionError> {
    text.parse::<DocumentMut>().map_err(|e| {
        ProvisionError::Invalid(format!(
            "{}: not valid TOML: {}",
            origin.display(),
            e.message()
        ))
    })
}

/// The names of the `[[agents]]` entries of `doc`, in order; `Err` if
/// `agents` is something other than an array of tables.
fn agents_mut<'a>(
    doc: &'a mut DocumentMut,
    origin: &Path,
) -> Result<Option<&'a mut toml_edit::ArrayOfTables>, ProvisionError> {
    match doc.get_mut("agents") {
        None => Ok(None),
        Some(item) => item.as_array_of_tables_mut().map(Some).ok_or_else(|| {
            ProvisionError::Invalid(format!(
                "{}: agents: not written as [[agents]] tables; edit it by hand",
                origin.display()
            ))
        }),
    }
}

fn entry_name(table: &Table) -> Option<&str> {
    table.get("name").and_then(Item::as_str)
}

/// `text` with one `[[agents]]` entry for `agent` appended after the last
/// one (or at the end when there is none). Refuses a name already present.
pub fn add_agent(text: &str, origin: &Path, agent: &NewAgent) -> Result<String, ProvisionError> {
    let mut doc = parse_mut(text, origin)?;
    let mut table = Table::new();
    table.insert("name", value(agent.name.as_str()));
    table.insert("tier", value(agent.tier.as_str()));
    if !agent.roles.is_empty() {
        table.insert(
            "roles",
            value(Array::from_iter(agent.roles.iter().map(String::as_str))),
        );
    }
    table
        .decor_mut()
        .set_prefix("\n# Commissioned with `con commission`.\n");
    match agents_mut(&mut doc, origin)? {
        Some(agents) => {
            if agents.iter().any(|t| entry_name(t) == Some(&agent.name)) {
                return Err(ProvisionError::Invalid(format!(
                    "{}: agent {} already exists",
                    origin.display(),
                    agent.name
                )));
            }
            // Right after the last entry even when other tables follow it.
            table.set_position(agents.iter().filter_map(Table::position).max());
            agents.push(table);
        }
        None => {
            let mut agents = toml_edit::ArrayOfTables::new();
            agents.push(table);
            doc.insert("agents", Item::ArrayOfTables(agents));
        }
    }
    Ok(doc.to_string())
}

/// `text` without the `[[agents]]` entry named `name`. The comment block
/// directly above its header (up to the nearest blank line) goes with it;
/// comments further up, such as a section banner, stay where they were.
pub fn remove_agent(text: &str, origin: &Path, name: &str) -> Result<String, ProvisionError> {
    let mut doc = parse_mut(text, origin)?;
    let unknown =
        || ProvisionError::Invalid(format!("{}: no agent named {name}", origin.display()));
    let agents = agents_mut(&mut doc, origin)?.ok_or_else(unknown)?;
    let index = agents
        .iter()
        .position(|t| entry_name(t) == Some(name))
        .ok_or_else(unknown)?;
    let removed = agents.remove(index);
    let kept = kept_prefix(removed.decor().prefix().and_then(|p| p.as_str()));
    if !kept.is_empty() {
        if let Some(next) = agents.get_mut(index) {
            let rest = next
                .decor()
                .prefix()
                .and_then(|p| p.as_str())
                .unwrap_or_default()
                .to_owned();
            next.decor_mut().set_prefix(format!("{kept}{rest}"));
        } else {
            let rest = doc.trailing().as_str().unwrap_or_default().to_owned();
            doc.set_trailing(format!("{kept}{rest}"));
        }
    }
    Ok(doc.to_string())
}

/// The part of a table's leading decor that is not its own comment: every
/// line before the last blank line.
fn kept_prefix(prefix: Option<&str>) -> String {
    let Some(prefix) = prefix else {
        return String::new();
    };
    let lines: Vec<&str> = prefix.split_inclusive('\n').collect();
    match lines.iter().rposition(|l| l.trim().is_empty()) {
        Some(last_blank) => lines[..last_blank].concat(),
        None => String::new(),
    }
}

/// Replaces `path` with `text` whole, keeping the old file's owner and
/// mode. `path` must be a regular file (not a symlink).
pub fn write_config(path: &Path, text: &str) -> Result<(), ProvisionError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| ProvisionError::io(path, &e))?;
    if !meta.file_type().is_file() {
        return Err(ProvisionError::Invalid(format!(
            "{}: not a regular file; refusing to replace it",
            path.display()
        )));
    }
    let failed = |e: con_fs::FsError| ProvisionError::io(&e.path, &e.cause);
    let mut staged = con_fs::StagedFile::begin(path, 0o600).map_err(failed)?;
    staged.write_all(text.as_bytes()).map_err(failed)?;
    staged.set_owner(meta.uid(), meta.gid()).map_err(failed)?;
    staged.set_mode(meta.mode() & 0o7777).map_err(failed)?;
    staged.commit().map_err(failed)
}

/// Line numbers (1-based) of the settings in a config file, by dotted key:
/// `network.allowed_ports`, `base.worker.model`, `agents.<name>` (the
/// `[[agents]]` header), `agents.<name>.tier`, … Table headers are keyed by
/// the table's path (`network`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigLines {
    lines: BTreeMap<String, usize>,
}

impl ConfigLines {
    /// Reads the positions from `text`. Unparseable text gives no lines
    /// (the config was validated before; citing lines is best effort).
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        let Ok(doc) = toml_edit::Document::parse(text) else {
            return out;
        };
        let line = |offset: usize| text.get(..offset).unwrap_or(text).matches('\n').count() + 1;
        let mut walk = Vec::new();
        walk.push((String::new(), doc.as_table()));
        while let Some((path, table)) = walk.pop() {
            for (key, item) in table.iter() {
                let full = if path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                };
                if let Some(span) = table.key(key).and_then(toml_edit::Key::span) {
                    out.lines.entry(full.clone()).or_insert(line(span.start));
                }
                match item {
                    Item::Table(t) => walk.push((full, t)),
                    Item::ArrayOfTables(tables) if full == "agents" => {
                        for t in tables.iter() {
                            let Some(name) = entry_name(t) else { continue };
                            let at = format!("agents.{name}");
                            if let Some(span) = t.span() {
                                out.lines.insert(at.clone(), line(span.start));
                            }
                            walk.push((at, t));
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// The line of `key`, if it is written in the file.
    pub fn line(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# top\n[system]\nname = \"x\" # inline\n\n\
        # ---- agents ----\n\n# the first\n[[agents]]\nname = \"a\"\ntier = \"worker\"\n\n\
        # the second\n[[agents]]\nname = \"b\"\ntier = \"operator\"\n\n[infra]\nsupervisor = \"auto\"\n";

    fn origin() -> &'static Path {
        Path::new("con.toml")
    }

    #[test]
    fn adding_keeps_everything_else_and_goes_after_the_last_entry() {
        let agent = NewAgent {
            name: "c".into(),
            tier: Tier::Worker,
            roles: vec!["r1".into(), "r2".into()],
        };
        let out = add_agent(TEXT, origin(), &agent).unwrap();
        let expected = TEXT.replace(
            "tier = \"operator\"\n",
            "tier = \"operator\"\n\n# Commissioned with `con commission`.\n[[agents]]\n\
             name = \"c\"\ntier = \"worker\"\nroles = [\"r1\", \"r2\"]\n",
        );
        assert_eq!(out, expected);
        let err = add_agent(
            TEXT,
            origin(),
            &NewAgent {
                name: "a".into(),
                ..agent
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "con.toml: agent a already exists");
    }

    #[test]
    fn adding_to_a_file_without_agents() {
        let out = add_agent(
            "[system]\nname = \"x\"\n",
            origin(),
            &NewAgent {
                name: "c".into(),
                tier: Tier::Officer,
                roles: vec![],
            },
        )
        .unwrap();
        assert_eq!(
            out,
            "[system]\nname = \"x\"\n\n# Commissioned with `con commission`.\n[[agents]]\nname = \"c\"\ntier = \"officer\"\n"
        );
    }

    #[test]
    fn removing_takes_the_entry_and_its_own_comment_only() {
        let out = remove_agent(TEXT, origin(), "a").unwrap();
        assert_eq!(
            out,
            "# top\n[system]\nname = \"x\" # inline\n\n# ---- agents ----\n\n\
             # the second\n[[agents]]\nname = \"b\"\ntier = \"operator\"\n\n[infra]\nsupervisor = \"auto\"\n"
        );
        let out = remove_agent(TEXT, origin(), "b").unwrap();
        assert!(
            !out.contains("the second") && !out.contains("\"b\""),
            "{out}"
        );
        assert!(
            out.contains("# the first\n[[agents]]\nname = \"a\""),
            "{out}"
        );
        assert_eq!(
            remove_agent(TEXT, origin(), "zz").unwrap_err().to_string(),
            "con.toml: no agent named zz"
        );
    }

    #[test]
    fn agents_not_written_as_tables_are_refused() {
        let text = "agents = [{ name = \"a\", tier = \"worker\" }]\n";
        let err = remove_agent(text, origin(), "a").unwrap_err();
        assert!(
            err.to_string().contains("not written as [[agents]]"),
            "{err}"
        );
    }

    #[test]
    fn lines_of_keys_headers_and_agents() {
        let lines = ConfigLines::parse(TEXT);
        assert_eq!(lines.line("system"), Some(2));
        assert_eq!(lines.line("system.name"), Some(3));
        assert_eq!(lines.line("agents.a"), Some(8));
        assert_eq!(lines.line("agents.a.tier"), Some(10));
        assert_eq!(lines.line("agents.b.tier"), Some(15));
        assert_eq!(lines.line("infra.supervisor"), Some(18));
        assert_eq!(lines.line("network"), None);
    }
}
