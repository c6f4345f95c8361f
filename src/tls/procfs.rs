//! Finding the files that may hold TLS code: processes' executables and mapped files
//! (`/proc/PID/maps`), and the usual library directories (also inside containers, through
//! `/proc/PID/root`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Directories where distributions put libssl.
pub const LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
    "/usr/local/ssl/lib",
    "/usr/local/ssl/lib64",
];

/// Identity of a file: device and inode (uprobes are per inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        m.is_file().then(|| Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// A file-backed executable mapping of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecMapping {
    pub start: u64,
    pub end: u64,
    /// Device and inode as /proc/PID/maps prints them (a cheap first-level key).
    pub maps_dev: String,
    pub maps_ino: u64,
    /// Path inside the process's mount namespace.
    pub path: String,
}

impl ExecMapping {
    /// A path to the same file that works from here, whatever namespace the process is
    /// in, for as long as the mapping exists.
    pub fn map_file(&self, pid: u32) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            self.start, self.end
        ))
    }
}

/// Parse /proc/PID/maps text: executable, file-backed mappings, one per file.
pub fn parse_maps(text: &str) -> Vec<ExecMapping> {
    let mut out: Vec<ExecMapping> = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(_off), Some(dev), Some(ino)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = f.next().unwrap_or("").trim_start();
        if !perms.contains('x') || !path.starts_with('/') {
            continue;
        }
        // A file replaced after it was mapped shows " (deleted)"; still probeable through
        // map_files, which reaches the inode.
        let Ok(ino) = ino.parse::<u64>() else {
            continue;
        };
        if ino == 0 {
            continue;
        }
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        if out.iter().any(|m| m.maps_ino == ino && m.maps_dev == dev) {
            continue;
        }
        out.push(ExecMapping {
            start,
            end,
            maps_dev: dev.to_string(),
            maps_ino: ino,
            path: path.to_string(),
        });
    }
    out
}

pub fn exec_mappings(pid: u32) -> Vec<ExecMapping> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|t| parse_maps(&t))
        .unwrap_or_default()
}

/// Every process id now.
pub fn pids() -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// True for kernel threads (no executable, no maps).
pub fn is_kernel_thread(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_err()
}

/// True for file names that look like an OpenSSL-API library (libssl.so.3,
/// libssl.so.1.1, libssl-xyz.so, libboringssl.so). Symbols decide in the end.
pub fn is_ssl_lib_name(name: &str) -> bool {
    (name.starts_with("libssl") || name.starts_with("libboringssl")) && name.contains(".so")
}

/// The libssl-like files in the usual directories under `root` ("/" or /proc/PID/root).
pub fn ssl_libs_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in LIB_DIRS {
        let d = root.join(dir.trim_start_matches('/'));
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if name.to_str().is_some_and(is_ssl_lib_name) {
                out.push(e.path());
            }
        }
    }
    out
}

/// Resolve the libssl-like DT_NEEDED entries of an executable inside `root`, the way
/// the dynamic loader would look (RUNPATH with $ORIGIN, then the usual directories).
pub fn resolve_needed_ssl(
    root: &Path,
    exe_in_ns: &Path,
    needs: &super::elf::Needs,
) -> Vec<PathBuf> {
    let origin = exe_in_ns
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vec::new();
    for lib in needs.needed.iter().filter(|n| is_ssl_lib_name(n)) {
        let dirs = needs
            .runpath
            .iter()
            .map(|d| d.replace("$ORIGIN", &origin).replace("${ORIGIN}", &origin))
            .chain(LIB_DIRS.iter().map(|d| d.to_string()));
        for d in dirs {
            let p = root.join(d.trim_start_matches('/')).join(lib);
            if p.is_file() {
                out.push(p);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let text = "\
55d0c6a00000-55d0c6a2e000 r--p 00000000 fd:01 1311 /usr/bin/curl
55d0c6a2e000-55d0c6aa0000 r-xp 0002e000 fd:01 1311 /usr/bin/curl
7f1c2a400000-7f1c2a45e000 r-xp 00020000 fd:01 2222 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2a500000-7f1c2a501000 r-xp 00000000 00:00 0 [vdso]
7f1c2a600000-7f1c2a601000 rw-p 00000000 00:00 0
7f1c2a700000-7f1c2a710000 r-xp 00000000 00:1f 3333 /tmp/app (deleted)
7f1c2a800000-7f1c2a810000 r-xp 00010000 fd:01 2222 /usr/lib/x86_64-linux-gnu/libssl.so.3
";
        let m = parse_maps(text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[0].path, "/usr/bin/curl");
        assert_eq!(m[0].start, 0x55d0c6a2e000);
        assert_eq!(m[1].maps_ino, 2222);
        assert_eq!(m[1].maps_dev, "fd:01");
        assert_eq!(m[2].path, "/tmp/app (deleted)");
        assert_eq!(
            m[1].map_file(7),
            PathBuf::from("/proc/7/map_files/7f1c2a400000-7f1c2a45e000")
        );
    }

    #[test]
    fn ssl_names() {
        assert!(is_ssl_lib_name("libssl.so.3"));
        assert!(is_ssl_lib_name("libssl.so.1.1"));
        assert!(is_ssl_lib_name("libssl3.so"));
        assert!(!is_ssl_lib_name("libcrypto.so.3"));
        assert!(!is_ssl_lib_name("libssl.a"));
    }

    #[test]
    fn needed_resolution() {
        let root = tempfile::tempdir().unwrap();
        let app = root.path().join("opt/app");
        std::fs::create_dir_all(app.join("lib")).unwrap();
        std::fs::write(app.join("lib/libssl.so.3"), b"x").unwrap();
        let needs = super::super::elf::Needs {
            needed: vec!["libc.so.6".into(), "libssl.so.3".into()],
            runpath: vec!["$ORIGIN/lib".into()],
        };
        let got = resolve_needed_ssl(root.path(), Path::new("/opt/app/server"), &needs);
        assert_eq!(got, vec![app.join("lib/libssl.so.3")]);
    }

    #[test]
    fn own_process_maps() {
        let me = std::process::id();
        let m = exec_mappings(me);
        assert!(!m.is_empty());
        let exe = std::env::current_exe().unwrap();
        assert!(m.iter().any(|x| Path::new(&x.path) == exe), "{m:?}");
        assert_eq!(
            FileId::of(&m[0].map_file(me)),
            FileId::of(Path::new(&m[0].path))
        );
    }
}
