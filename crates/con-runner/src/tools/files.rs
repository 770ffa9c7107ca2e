//! The file tools. Paths are the model's: relative ones are joined to the
//! workspace, absolute ones are used as given, and the kernel decides.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::OFlag;
use serde::Deserialize;

use super::{ToolContext, ToolOutput};

/// Bytes `read_file` returns when the model gives no limit.
pub const READ_PAGE: u64 = 64 * 1024;

/// The largest page `read_file` returns.
pub const READ_MAX_LIMIT: u64 = 256 * 1024;

/// Entries `list_dir` shows at most.
const LIST_MAX_ENTRIES: usize = 1000;

#[derive(Debug, Deserialize)]
pub(super) struct ReadArgs {
    path: String,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    limit: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WriteArgs {
    path: String,
    content: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct EditArgs {
    path: String,
    old_text: String,
    new_text: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListArgs {
    #[serde(default)]
    path: Option<String>,
}

fn failed(what: &str, path: &Path, e: &io::Error) -> ToolOutput {
    ToolOutput::error(format!("cannot {what} {}: {e}", path.display()))
}

/// One page of a file, and where the next one starts.
pub(super) fn read_file(ctx: &ToolContext, args: &ReadArgs) -> ToolOutput {
    let path = ctx.resolve(&args.path);
    let offset = args.offset.unwrap_or(0);
    let limit = args.limit.unwrap_or(READ_PAGE).clamp(1, READ_MAX_LIMIT);
    // O_NONBLOCK: a FIFO must not hang the session.
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => return failed("read", &path, &e),
    };
    let size = match file.metadata() {
        Ok(m) if m.is_dir() => {
            return ToolOutput::error(format!("{} is a directory (use list_dir)", path.display()));
        }
        Ok(m) if m.is_file() => Some(m.len()),
        Ok(_) => None,
        Err(e) => return failed("read", &path, &e),
    };
    if offset > 0
        && let Err(e) = file.seek(SeekFrom::Start(offset))
    {
        return failed("seek in", &path, &e);
    }
    // One byte past the page says whether there is more, even for files
    // whose size the kernel does not report (/proc, devices).
    let mut buf = Vec::new();
    if let Err(e) = (&mut file).take(limit + 1).read_to_end(&mut buf) {
        return failed("read", &path, &e);
    }
    let more = buf.len() as u64 > limit;
    buf.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let end = offset + buf.len() as u64;
    let mut content = String::from_utf8_lossy(&buf).into_owned();
    let of_size = size.map(|s| format!(" of {s}")).unwrap_or_default();
    if more {
        content.push_str(&format!(
            "\n[bytes {offset}-{end}{of_size}; more follows: call read_file with offset={end}]"
        ));
    } else {
        content.push_str(&format!("\n[bytes {offset}-{end}{of_size}; end of file]"));
    }
    ToolOutput {
        truncated: more,
        ..ToolOutput::ok(content)
    }
}

fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fs::create_dir_all(parent),
        _ => Ok(()),
    }
}

/// Largest file `edit_file` reads.
const EDIT_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// Opens `path` without blocking (a FIFO must not hang the session) and
/// refuses anything but a regular file (a device must not feed it forever).
fn open_regular(path: &Path, options: &mut OpenOptions) -> io::Result<fs::File> {
    let file = options.custom_flags(OFlag::O_NONBLOCK.bits()).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Refuses to replace anything but a regular file (the rename would replace
/// a symlink or a FIFO, not write through it).
fn check_replaceable(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "exists and is not a regular file",
        )),
        _ => Ok(()),
    }
}

/// Creates or replaces a file.
pub(super) fn write_file(ctx: &ToolContext, args: &WriteArgs) -> ToolOutput {
    let path = ctx.resolve(&args.path);
    let written = create_parent(&path)
        .and_then(|()| check_replaceable(&path))
        .and_then(|()| {
            con_fs::replace_file(&path, args.content.as_bytes(), 0o666)
                .map_err(|e| io::Error::new(e.kind(), e.to_string()))
        });
    match written {
        Ok(()) => ToolOutput::ok(format!(
            "wrote {} bytes to {}",
            args.content.len(),
            path.display()
        )),
        Err(e) => failed("write", &path, &e),
    }
}

/// Replaces the single occurrence of `old_text`.
pub(super) fn edit_file(ctx: &ToolContext, args: &EditArgs) -> ToolOutput {
    let path = ctx.resolve(&args.path);
    if args.old_text.is_empty() {
        return ToolOutput::error("old_text is empty; give the exact text to replace".into());
    }
    let read = open_regular(&path, OpenOptions::new().read(true)).and_then(|f| {
        let mut bytes = Vec::new();
        f.take(EDIT_MAX_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > EDIT_MAX_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("larger than {EDIT_MAX_BYTES} bytes; edit it with exec"),
            ));
        }
        Ok(bytes)
    });
    let text = match read {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                return ToolOutput::error(format!(
                    "{} is not UTF-8 text; use write_file or exec to change it",
                    path.display()
                ));
            }
        },
        Err(e) => return failed("read", &path, &e),
    };
    let count = text.matches(&args.old_text).count();
    if count != 1 {
        return ToolOutput::error(format!(
            "old_text must occur exactly once in {}, but it occurs {count} times{}; nothing was changed",
            path.display(),
            if count == 0 {
                ""
            } else {
                " (include more surrounding text to make it unique)"
            }
        ));
    }
    let edited = text.replacen(&args.old_text, &args.new_text, 1);
    // Written in place, not replaced: the file keeps its owner, mode and ACLs.
    let written = open_regular(&path, OpenOptions::new().write(true).truncate(true))
        .and_then(|mut f| f.write_all(edited.as_bytes()));
    match written {
        Ok(()) => ToolOutput::ok(format!("edited {} (1 replacement)", path.display())),
        Err(e) => failed("write", &path, &e),
    }
}

/// Appends to a file, creating it if needed.
pub(super) fn append_file(ctx: &ToolContext, args: &WriteArgs) -> ToolOutput {
    let path = ctx.resolve(&args.path);
    let appended = create_parent(&path).and_then(|()| {
        open_regular(&path, OpenOptions::new().append(true).create(true))?
            .write_all(args.content.as_bytes())
    });
    match appended {
        Ok(()) => ToolOutput::ok(format!(
            "appended {} bytes to {}",
            args.content.len(),
            path.display()
        )),
        Err(e) => failed("append to", &path, &e),
    }
}

/// Lists a directory, sorted by name.
pub(super) fn list_dir(ctx: &ToolContext, args: &ListArgs) -> ToolOutput {
    let path = ctx.resolve(args.path.as_deref().unwrap_or("."));
    let entries = match fs::read_dir(&path) {
        Ok(e) => e,
        Err(e) => return failed("list", &path, &e),
    };
    let mut names: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    names.sort();
    let total = names.len();
    let mut out = format!("{} ({total} entries)\n", path.display());
    for entry in names.iter().take(LIST_MAX_ENTRIES) {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let line = match fs::symlink_metadata(entry) {
            Ok(m) if m.is_dir() => format!("dir  {name}/"),
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(entry)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|e| format!("? ({e})"));
                format!("link {name} -> {target}")
            }
            Ok(m) if m.is_file() => format!("file {name} ({} bytes)", m.len()),
            Ok(m) if m.file_type().is_fifo() => format!("fifo {name}"),
            Ok(_) => format!("othr {name}"),
            Err(e) => format!("???? {name} ({e})"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    let truncated = total > LIST_MAX_ENTRIES;
    if truncated {
        out.push_str(&format!(
            "[only the first {LIST_MAX_ENTRIES} of {total} entries are shown; use exec for more]\n"
        ));
    }
    ToolOutput {
        truncated,
        ..ToolOutput::ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::tools::{run, scrubbed_env};

    fn ctx(dir: &Path) -> ToolContext {
        ToolContext {
            workspace: dir.to_owned(),
            env: scrubbed_env(dir, "nobody", dir),
            stop: std::sync::Arc::default(),
        }
    }

    fn call(dir: &Path, tool: &str, args: serde_json::Value) -> ToolOutput {
        run(&ctx(dir), tool, &args, Duration::from_secs(5))
    }

    #[test]
    fn read_file_pages_and_says_where_to_continue() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..200_000u32)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        fs::write(dir.path().join("big.txt"), &text).unwrap();

        let first = call(dir.path(), "read_file", json!({"path": "big.txt"}));
        assert!(!first.is_error);
        assert!(first.truncated);
        let (page, trailer) = first.content.rsplit_once('\n').unwrap();
        assert_eq!(page, &text[..65536]);
        assert_eq!(
            trailer,
            "[bytes 0-65536 of 200000; more follows: call read_file with offset=65536]"
        );

        let last = call(
            dir.path(),
            "read_file",
            json!({"path": dir.path().join("big.txt"), "offset": 190_000, "limit": 20_000}),
        );
        let (page, trailer) = last.content.rsplit_once('\n').unwrap();
        assert_eq!(page, &text[190_000..]);
        assert_eq!(trailer, "[bytes 190000-200000 of 200000; end of file]");
        assert!(!last.truncated);
    }

    #[test]
    fn read_file_errors_go_to_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let out = call(dir.path(), "read_file", json!({"path": "missing"}));
        assert!(out.is_error);
        assert!(
            out.content.contains("No such file or directory"),
            "{}",
            out.content
        );
        let out = call(dir.path(), "read_file", json!({"path": "."}));
        assert!(out.is_error);
        assert!(out.content.contains("is a directory"), "{}", out.content);
    }

    #[test]
    fn write_append_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let out = call(
            dir.path(),
            "write_file",
            json!({"path": "a/b/c.txt", "content": "one\n"}),
        );
        assert!(!out.is_error, "{}", out.content);
        let out = call(
            dir.path(),
            "append_file",
            json!({"path": "a/b/c.txt", "content": "two\n"}),
        );
        assert!(!out.is_error, "{}", out.content);
        assert_eq!(
            fs::read_to_string(dir.path().join("a/b/c.txt")).unwrap(),
            "one\ntwo\n"
        );
        let out = call(
            dir.path(),
            "write_file",
            json!({"path": "a/b/c.txt", "content": "new"}),
        );
        assert!(!out.is_error);
        assert_eq!(
            fs::read_to_string(dir.path().join("a/b/c.txt")).unwrap(),
            "new"
        );

        std::os::unix::fs::symlink("a/b/c.txt", dir.path().join("link")).unwrap();
        let out = call(dir.path(), "list_dir", json!({}));
        assert!(out.content.contains("(2 entries)"), "{}", out.content);
        assert!(out.content.contains("dir  a/\n"), "{}", out.content);
        assert!(
            out.content.contains("link link -> a/b/c.txt\n"),
            "{}",
            out.content
        );
        let out = call(dir.path(), "list_dir", json!({"path": "a/b"}));
        assert!(
            out.content.contains("file c.txt (3 bytes)\n"),
            "{}",
            out.content
        );
    }

    #[test]
    fn fifos_and_devices_are_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for (tool, args) in [
            ("write_file", json!({"path": "pipe", "content": "x"})),
            ("append_file", json!({"path": "pipe", "content": "x"})),
            (
                "edit_file",
                json!({"path": "pipe", "old_text": "a", "new_text": "b"}),
            ),
            (
                "edit_file",
                json!({"path": "/dev/zero", "old_text": "a", "new_text": "b"}),
            ),
        ] {
            let out = call(dir.path(), tool, args);
            assert!(out.is_error, "{tool}: {}", out.content);
        }
    }

    #[test]
    fn edit_file_needs_exactly_one_match() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.txt");
        fs::write(&file, "alpha beta beta\n").unwrap();

        let none = call(
            dir.path(),
            "edit_file",
            json!({"path": "f.txt", "old_text": "gamma", "new_text": "x"}),
        );
        assert!(none.is_error);
        assert!(none.content.contains("occurs 0 times"), "{}", none.content);

        let two = call(
            dir.path(),
            "edit_file",
            json!({"path": "f.txt", "old_text": "beta", "new_text": "x"}),
        );
        assert!(two.is_error);
        assert!(two.content.contains("occurs 2 times"), "{}", two.content);
        assert_eq!(fs::read_to_string(&file).unwrap(), "alpha beta beta\n");

        let empty = call(
            dir.path(),
            "edit_file",
            json!({"path": "f.txt", "old_text": "", "new_text": "x"}),
        );
        assert!(empty.is_error);

        let one = call(
            dir.path(),
            "edit_file",
            json!({"path": "f.txt", "old_text": "alpha", "new_text": "omega"}),
        );
        assert!(!one.is_error, "{}", one.content);
        assert_eq!(fs::read_to_string(&file).unwrap(), "omega beta beta\n");
    }
}
