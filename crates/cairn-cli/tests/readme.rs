//! The README's walkthrough, run as it stands, so README and binary cannot
//! drift. The one change: port 4433 becomes a free port.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn walkthrough() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let at = readme
        .find("<!-- walkthrough:")
        .expect("the walkthrough marker");
    let rest = &readme[at..];
    let start = rest.find("```sh\n").expect("an sh block after the marker") + 6;
    let end = rest[start..].find("```").unwrap() + start;
    rest[start..end].to_owned()
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let script = walkthrough();
    assert!(
        script.contains("cairn put")
            && script.contains("cairn sync")
            && script.contains("cairn check")
    );
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = script.replace("4433", &port.to_string());
    let home = tempfile::tempdir().unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_cairn"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out_file = home.path().join("out.txt");
    let err_file = home.path().join("err.txt");
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(home.path())
        .env("HOME", home.path())
        .env("PATH", path)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("CAIRN_KEY")
        .env_remove("CAIRN_SERVER_KEY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever happened, end the script's process group (a server left
    // running by a failed step).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let out = std::fs::read_to_string(&out_file).unwrap();
    let err = std::fs::read_to_string(&err_file).unwrap();
    let status =
        status.unwrap_or_else(|| panic!("the walkthrough hung\nstdout:\n{out}\nstderr:\n{err}"));
    assert!(
        status.success(),
        "the walkthrough failed ({status})\nstdout:\n{out}\nstderr:\n{err}"
    );
    for want in [
        "copied 1 change(s) (9 bytes) from redb:laptop.redb to quic://",
        "to redb:phone.redb; 1 examined, 0 rejected",
        "buy milk",
        "ok: no problems found in redb:phone.redb",
    ] {
        assert!(
            out.contains(want),
            "{want:?} not in stdout:\n{out}\nstderr:\n{err}"
        );
    }
    assert!(
        err.contains("stopped"),
        "the server stopped cleanly:\n{err}"
    );
    assert!(!err.contains("error:"), "{err}");
}
