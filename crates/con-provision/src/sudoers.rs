//! Sudoers drop-ins: from a profile's `sudoers/<role>` template to the text
//! installed for one agent.
//!
//! # The substitution rule
//!
//! A template grants rights to the placeholder user `a-<role>` (the name the
//! agent would have in the default profile with the default prefix). Every
//! line that is not blank and not a comment must start with exactly that
//! token followed by whitespace; the token is replaced by the agent's real
//! user name (`<user prefix><agent name>`) and nothing else on the line is
//! touched. Anything else is refused, because a template line granting
//! rights to some other user, setting `Defaults`, or continuing onto the
//! next line (`\`) would be installed as root-owned policy for a user the
//! template does not name. `#include`/`@include` lines are directives, not
//! comments, and are refused too.
//!
//! Installing ([`install`]) writes a temp file next to the target (its name
//! starts with `.`, which sudo ignores), checks it with `visudo -c -f`, and
//! only then renames it into place, 0440 root:root. A template visudo rejects
//! never replaces the file already installed.

use std::path::Path;
use std::process::Command;

/// The text installed for the agent with user name `user` from the templates
/// of its roles (`(role, template text)`, in config order). `Err` is a one-line
/// message naming the template and line.
pub fn render(agent: &str, user: &str, templates: &[(String, &str)]) -> Result<String, String> {
    let mut out = format!(
        "# Installed by `con bootstrap` for agent {agent}; do not edit: changes are overwritten.\n"
    );
    for (role, text) in templates {
        let token = format!("a-{role}");
        out.push_str(&format!(
            "\n# From sudoers/{role}, with {token} replaced by {user}.\n"
        ));
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            let directive = ["#include", "@include"]
                .iter()
                .any(|d| trimmed.starts_with(d));
            if trimmed.is_empty() || (trimmed.starts_with('#') && !directive) {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            let where_ = || format!("sudoers/{role} line {}", n + 1);
            if directive {
                return Err(format!("{}: include directives are not allowed", where_()));
            }
            if trimmed.ends_with('\\') {
                return Err(format!("{}: line continuations are not allowed", where_()));
            }
            let rest = trimmed
                .strip_prefix(&token)
                .filter(|rest| rest.starts_with([' ', '\t']))
                .ok_or_else(|| {
                    format!(
                        "{}: every rule must start with the user {token} (got {:?})",
                        where_(),
                        trimmed.split_whitespace().next().unwrap_or_default()
                    )
                })?;
            out.push_str(user);
            out.push_str(rest);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Installs `text` as `path` (0440 root:root) after `visudo -c -f` accepts it.
/// On any failure the file at `path` is left as it was.
pub fn install(path: &Path, text: &str) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", path.display()))?;
    // Created if missing (a fresh root); an existing one, a system
    // directory, is not bootstrap's to re-own or re-mode.
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The staged file is hidden (its name has a `.`), so sudo ignores it
    // until it is renamed into place; this (root) process creates it
    // root:root already.
    let mut staged = con_fs::StagedFile::begin(path, 0o400).map_err(|e| e.to_string())?;
    staged
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    staged.set_mode(0o440).map_err(|e| e.to_string())?;
    visudo_check(staged.temp_path(), path)?;
    staged
        .commit()
        .map_err(|e| format!("{}: cannot install: {e}", path.display()))
}

/// Checks a sudoers file that is not installed (a profile's `sudoers.d/`
/// drop-in, which con does not install: see `con bootstrap`) with `visudo
/// -c -f`. `Err` is one line naming the file and what visudo said.
pub fn vet(path: &Path) -> Result<(), String> {
    visudo_check(path, path)
}

/// `visudo -c -f file`, its complaints joined on one line with the file
/// called `shown_as`.
fn visudo_check(file: &Path, shown_as: &Path) -> Result<(), String> {
    let out = Command::new("visudo")
        .arg("-c")
        .arg("-f")
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run visudo (install the sudo package): {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let message =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let message = message
        .replace(&file.display().to_string(), &shown_as.display().to_string())
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Err(format!("visudo rejected {}: {message}", shown_as.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_token_becomes_the_user() {
        let text = "# c\n\na-sysadmin ALL=(root) NOPASSWD: /bin/x y\n";
        let out = render("ops", "t-ops", &[("sysadmin".into(), text)]).unwrap();
        assert!(
            out.contains("\nt-ops ALL=(root) NOPASSWD: /bin/x y\n"),
            "{out}"
        );
        assert!(!out.contains("\na-sysadmin"), "{out}");
    }

    #[test]
    fn other_users_directives_and_continuations_are_refused() {
        for (bad, why) in [
            (
                "root ALL=(ALL) ALL\n",
                "must start with the user a-sysadmin",
            ),
            ("a-sysadminx ALL=(ALL) ALL\n", "must start with the user"),
            ("Defaults !requiretty\n", "must start with the user"),
            ("#include /tmp/x\n", "include directives"),
            ("@includedir /tmp\n", "include directives"),
            ("a-sysadmin ALL=(root) \\\n", "continuations"),
        ] {
            let err = render("s", "a-s", &[("sysadmin".into(), bad)]).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(err.starts_with("sudoers/sysadmin line 1: "), "{err}");
        }
    }
}
