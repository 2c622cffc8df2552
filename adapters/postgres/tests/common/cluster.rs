//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory (as
//! the `postgres` user when running as root), started on a Unix socket in
//! that directory and a free 127.0.0.1 port, stopped and removed on drop.
//!
//! Standard library only: `xtask` includes this same file with `#[path]`,
//! and so do the crash test and the benchmarks.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// The Debian package that provides `initdb` and `pg_ctl`.
pub const PACKAGE: &str = "postgresql";

/// Where PostgreSQL's server programs are: `$CAIRN_PG_BIN`, else the
/// newest `/usr/lib/postgresql/N/bin` (Debian), else `pg_config --bindir`,
/// else a directory on `PATH` holding `initdb`.
pub fn find_bin() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("CAIRN_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(format!("CAIRN_PG_BIN={} has no initdb", dir.display()))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Ok(dir);
            }
        }
    }
    Err(format!(
        "PostgreSQL's server programs (initdb, pg_ctl) are not installed: install the Debian \
         package `{PACKAGE}` (apt-get install -y {PACKAGE}), or set CAIRN_PG_BIN to their directory"
    ))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The uid and gid of the `postgres` user (from `/etc/passwd`).
fn postgres_user() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres"))
                .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
        })
        .ok_or_else(|| {
            format!(
                "running as root, but there is no `postgres` user to run the server as \
                 (the Debian package `{PACKAGE}` creates it)"
            )
        })
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A running (or stopped) throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The temporary directory: `data/`, the socket and `server.log`.
    pub dir: PathBuf,
    /// The server programs.
    pub bin: PathBuf,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// Run server commands as `postgres` (we are root).
    as_postgres: bool,
    running: bool,
}

impl Cluster {
    /// `initdb` a new cluster into a fresh temporary directory and start it.
    pub fn start_new() -> Result<Cluster, String> {
        let bin = find_bin()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("cairn-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let as_postgres = is_root();
        if as_postgres {
            let (uid, gid) = postgres_user()?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let mut cluster = Cluster {
            dir,
            bin,
            port: 0,
            as_postgres,
            running: false,
        };
        let data = cluster.data();
        cluster.run(
            cluster
                .cmd("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
                .args(["--locale=C"]),
        )?;
        cluster.start()?;
        Ok(cluster)
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A URL for the `postgres` database over TCP.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The same database over the Unix socket.
    pub fn socket_url(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port
        )
    }

    fn cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, cmd: &mut Command) -> Result<(), String> {
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            Err(format!(
                "{cmd:?} failed ({}):\n{}{}\n--- server.log (tail) ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                log.lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        }
    }

    /// Start (or restart) the server, on a new free port the first time;
    /// waits until it accepts connections.
    pub fn start(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..3 {
            if self.port == 0 {
                self.port = free_port()?;
            }
            let opts = format!(
                "-p {} -k {} -h 127.0.0.1 -c max_connections=400 -c shared_buffers=128MB",
                self.port,
                self.dir.display()
            );
            let r = self.run(
                self.cmd("pg_ctl")
                    .arg("-D")
                    .arg(self.data())
                    .arg("-l")
                    .arg(self.dir.join("server.log"))
                    .args(["-w", "-t", "120", "-o", &opts, "start"]),
            );
            match r {
                Ok(()) => {
                    self.running = true;
                    return Ok(());
                }
                Err(e) => {
                    last = e;
                    self.port = 0;
                }
            }
        }
        Err(last)
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, with
    /// no checkpoint (crash recovery runs at the next start).
    pub fn stop_immediate(&mut self) -> Result<(), String> {
        self.stop_mode("immediate")
    }

    /// A clean (fast) shutdown.
    pub fn stop(&mut self) -> Result<(), String> {
        self.stop_mode("fast")
    }

    fn stop_mode(&mut self, mode: &str) -> Result<(), String> {
        if !self.running {
            return Ok(());
        }
        self.run(
            self.cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "120", "-m", mode, "stop"]),
        )?;
        self.running = false;
        Ok(())
    }

    /// Where the server logs.
    pub fn log(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping the throwaway PostgreSQL cluster failed: {e}");
            let _ = self.stop_immediate();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
