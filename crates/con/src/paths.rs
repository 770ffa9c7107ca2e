//! The global flags that say which host tree and which names a command
//! works on, resolved into the one [`Layout`].

use std::path::PathBuf;

use con_layout::{DEFAULT_GROUP_PREFIX, DEFAULT_ROOT, DEFAULT_USER_PREFIX, Layout};

/// `--root`, `--config`, `--user-prefix`, `--group-prefix`.
#[derive(Debug, clap::Args)]
pub struct LayoutArgs {
    /// Root prefix for every con path (config, inboxes, event log).
    #[arg(
        long,
        env = "CON_ROOT",
        global = true,
        default_value = DEFAULT_ROOT,
        value_name = "DIR"
    )]
    root: PathBuf,

    /// Config file [default: <root>/etc/con/con.toml].
    #[arg(long, env = "CON_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Prefix of agent user names.
    #[arg(
        long,
        env = "CON_USER_PREFIX",
        global = true,
        default_value = DEFAULT_USER_PREFIX,
        value_name = "PREFIX"
    )]
    user_prefix: String,

    /// Prefix of con's group names (agents, officers, operators, workers, trusted).
    #[arg(
        long,
        env = "CON_GROUP_PREFIX",
        global = true,
        default_value = DEFAULT_GROUP_PREFIX,
        value_name = "PREFIX"
    )]
    group_prefix: String,
}

impl LayoutArgs {
    /// The layout these flags name. Relative paths are made absolute:
    /// paths are recorded in the log and handed to processes that run
    /// elsewhere (`/`).
    ///
    /// Refused through sudo unless every flag is at its default: agents may
    /// be granted `con` commands through sudo, and must not be able to point
    /// a root `con` at a tree or config they wrote themselves.
    pub fn resolve(self) -> anyhow::Result<Layout> {
        let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        let layout = Layout::new(&absolute(self.root), &self.user_prefix, &self.group_prefix)?;
        let layout = match self.config {
            Some(file) => layout.with_config_file(&absolute(file))?,
            None => layout,
        };
        if std::env::var_os("SUDO_UID").is_some() && !layout.con_flags().is_empty() {
            anyhow::bail!(
                "--root/--config/--user-prefix/--group-prefix (CON_ROOT/CON_CONFIG/CON_USER_PREFIX/CON_GROUP_PREFIX) are refused when run through sudo"
            );
        }
        Ok(layout)
    }
}
