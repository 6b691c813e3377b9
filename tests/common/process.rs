//! Running the binary as a user would: scripted stdin, output collected
//! while it runs, signals, a pseudo-terminal.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{read_json, stderr, stdout};

pub fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_expert"));
    c.args(args)
        .env("EXPERT_HISTORY", "")
        .env_remove("NO_COLOR");
    c
}

/// Runs the REPL with `script` as stdin; returns (status, stdout, stderr).
pub fn repl(args: &[&str], script: &str) -> (i32, String, String) {
    let mut child = cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A REPL that exits early closes its stdin: what it printed (below)
    // says why, so a broken pipe here is not the failure to report.
    let _ = child.stdin.take().unwrap().write_all(script.as_bytes());
    let o = child.wait_with_output().unwrap();
    (o.status.code().unwrap_or(-1), stdout(&o), stderr(&o))
}

/// The JSON lines of a `--json` REPL: one object per answer.
pub fn answers(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn messages(path: &Path) -> Vec<Value> {
    read_json(path).as_array().unwrap().clone()
}

pub fn msg(role: &str, content: &str) -> Value {
    serde_json::json!({"role": role, "content": content})
}

/// Output of a child collected by a background thread.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn spawn(mut r: impl Read + Send + 'static) -> Self {
        let c = Self::default();
        let buf = c.0.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        c
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until the output (from byte `from` on) satisfies `ok`;
    /// returns the length of the output then.
    pub fn wait(&self, from: usize, what: &str, ok: impl Fn(&str) -> bool) -> usize {
        self.wait_at(what, |buf| {
            (buf.len() >= from && ok(&String::from_utf8_lossy(&buf[from..]))).then_some(buf.len())
        })
    }

    /// Waits for `pattern` after byte `from`; returns the position just after it.
    pub fn wait_for(&self, from: usize, pattern: &str) -> usize {
        let p = pattern.as_bytes();
        self.wait_at(pattern, |buf| {
            (from..=buf.len().saturating_sub(p.len()))
                .find(|&i| buf[i..].starts_with(p))
                .map(|i| i + p.len())
        })
    }

    pub fn wait_at(&self, what: &str, found: impl Fn(&[u8]) -> Option<usize>) -> usize {
        let start = Instant::now();
        loop {
            if let Some(at) = found(&self.0.lock().unwrap()) {
                return at;
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!(
                    "timed out waiting for {what}; output so far:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(unix)]
pub fn signal(child: &Child, sig: i32) {
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

pub fn wait_exit(child: &mut Child) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the REPL did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[allow(unused_imports)]
pub use pty::spawn as spawn_pty;

#[cfg(unix)]
mod pty {
    use std::fs::File;
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};

    /// Starts `cmd` as the session leader of a new pseudo-terminal and
    /// returns the child and the terminal's master side.
    pub fn spawn(mut cmd: Command) -> (Child, File) {
        let (mut master, mut slave) = (0, 0);
        let ws = libc::winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(rc, 0, "openpty");
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(cmd); // closes our copies of the slave
        (child, unsafe {
            File::from_raw_fd(OwnedFd::from_raw_fd(master).into_raw_fd())
        })
    }
}
