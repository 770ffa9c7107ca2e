//! A small file system of its own for one test: what a full disk does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a given size mounted at a directory for one test, unmounted
/// on drop, also when the test panics. The unmount is lazy (`umount -l`):
/// a process that still has a file open there (a daemon being torn down)
/// cannot keep the mount, and the memory goes once it closes its files.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB at `dir`, creating the directory.
    pub fn mount(dir: &Path, size_mib: u64) -> Self {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs at {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Bytes free on it (for unprivileged users, like `df`).
    pub fn free_bytes(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.dir).expect("statvfs");
        s.blocks_available() * s.fragment_size()
    }

    /// Writes the file `name` on it until at most `leave` bytes are free
    /// (or the file system is full), and returns its path.
    pub fn fill(&self, name: &str, leave: u64) -> PathBuf {
        let path = self.dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("create the filler");
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            let free = self.free_bytes();
            if free <= leave {
                break;
            }
            let n = usize::try_from((free - leave).min(chunk.len() as u64)).unwrap_or(chunk.len());
            match file.write(&chunk[..n]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("write the filler: {e}"),
            }
        }
        file.sync_all().expect("sync the filler");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
