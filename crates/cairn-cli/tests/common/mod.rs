//! Helpers: run the real `cairn` binary in a scratch home, and background
//! servers whose output is read line by line with deadlines.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// A scratch home directory: HOME points here, commands run here.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.args(args)
            .current_dir(self.path())
            .env("HOME", self.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("CAIRN_KEY")
            .env_remove("CAIRN_SERVER_KEY")
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run cairn")
    }

    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// `cairn id new` (or with `--server`); returns the peer id.
    pub fn id_new(&self, server: bool) -> String {
        let args: &[&str] = if server {
            &["id", "new", "--server"]
        } else {
            &["id", "new"]
        };
        ok(&self.run(args)).lines().next().unwrap().to_owned()
    }

    pub fn spawn(&self, args: &[&str]) -> Bg {
        Bg::spawn(self.cmd(args))
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert success; returns stdout.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({:?}):\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Assert a failure with `code` and exactly one `error: ` line on stderr,
/// with no ANSI escapes, panic text or backtrace; returns that line.
pub fn one_error(o: &Output, code: i32) -> String {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit code; stdout: {}\nstderr: {err}",
        stdout(o)
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(!err.contains('\x1b'), "no ANSI: {err:?}");
    assert!(
        !err.contains("panicked at") && !err.contains("backtrace"),
        "{err}"
    );
    assert!(!err.contains(" WARN "), "no warnings: {err}");
    lines[0].to_owned()
}

/// A background `cairn` whose stdout and stderr are read into channels;
/// killed when dropped.
pub struct Bg {
    pub child: Child,
    out: Receiver<String>,
    err: Receiver<String>,
    pub err_seen: Vec<String>,
    pub out_seen: Vec<String>,
}

fn pump(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Bg {
    pub fn spawn(mut cmd: Command) -> Bg {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = pump(child.stdout.take().unwrap());
        let err = pump(child.stderr.take().unwrap());
        Bg {
            child,
            out,
            err,
            err_seen: Vec::new(),
            out_seen: Vec::new(),
        }
    }

    /// The first stderr line matching `f`, within `within`.
    pub fn err_line(&mut self, within: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left) {
                Ok(l) => {
                    self.err_seen.push(l.clone());
                    if f(&l) {
                        return l;
                    }
                }
                Err(e) => panic!("no such stderr line ({e:?}); saw: {:#?}", self.err_seen),
            }
        }
    }

    /// The first stdout line matching `f`, within `within`.
    pub fn out_line(&mut self, within: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(l) => {
                    self.out_seen.push(l.clone());
                    if f(&l) {
                        return l;
                    }
                }
                Err(e) => {
                    while let Ok(l) = self.err.try_recv() {
                        self.err_seen.push(l);
                    }
                    panic!(
                        "no such stdout line ({e:?}); saw: {:#?}; stderr: {:#?}",
                        self.out_seen, self.err_seen
                    )
                }
            }
        }
    }

    /// The next stdout line, or `None` if it exits (or `within` passes)
    /// first.
    pub fn next_line_or_exit(&mut self, within: Duration) -> Option<String> {
        match self.out.recv_timeout(within) {
            Ok(l) => {
                self.out_seen.push(l.clone());
                Some(l)
            }
            Err(_) => None,
        }
    }

    /// Write one line to its stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Send SIGTERM.
    pub fn term(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Wait for it to exit, at most `within`.
    pub fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "did not exit in {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every stderr line still buffered (after exit).
    pub fn rest_of_stderr(&mut self) -> Vec<String> {
        while let Ok(l) = self.err.recv_timeout(Duration::from_secs(5)) {
            self.err_seen.push(l);
        }
        self.err_seen.clone()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const T: Duration = Duration::from_secs(30);

/// Start `cairn serve ARGS --listen 127.0.0.1:0`; returns it and the
/// first quic:// URL it prints, after its "listening" line.
pub fn serve(home: &Home, args: &[&str]) -> (Bg, String) {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut bg = home.spawn(&all);
    bg.err_line(T, |l| l.starts_with("listening on "));
    let url = bg.out_line(T, |l| l.starts_with("quic://"));
    (bg, url)
}

/// Append `n` unsigned changes to a redb store file, outside the CLI.
pub fn seed_redb(path: &Path, id: &str, n: usize) {
    use cairn::{AppendOnlyStore, ChangeBuilder, ChangeKind, DocId, StoreId};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = cairn_redb::RedbStore::open(path, StoreId::new(id).unwrap())
            .await
            .unwrap();
        let batch: Vec<_> = (0..n)
            .map(|i| {
                ChangeBuilder::new(ChangeKind::Create, DocId::new(format!("doc-{i}")).unwrap())
                    .created_at(i as u64)
                    .payload(vec![i as u8; 100])
                    .build()
                    .unwrap()
            })
            .collect();
        s.append(batch).await.unwrap();
    });
}

pub fn redb(p: &Path) -> String {
    format!("redb:{}", p.display())
}
