//! The terminal's settings (unix): remembered at start and restored when a
//! signal ends the chat (the line editor may have it in raw mode), and a
//! quiet mode while an answer streams, in which what the user types is kept
//! (not echoed into the answer) and handed back afterwards.

use std::sync::OnceLock;

static ORIGINAL: OnceLock<Option<libc::termios>> = OnceLock::new();

fn get(fd: i32) -> Option<libc::termios> {
    // SAFETY: tcgetattr fills a plain C struct; isatty guards the fd.
    unsafe {
        if libc::isatty(fd) != 1 {
            return None;
        }
        let mut t: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(fd, &mut t) == 0).then_some(t)
    }
}

fn set(fd: i32, t: &libc::termios) {
    // SAFETY: t came from tcgetattr on the same descriptor.
    unsafe {
        libc::tcsetattr(fd, libc::TCSANOW, t);
    }
}

/// Remembers stdin's terminal settings (once), to restore on a signal exit.
pub(super) fn remember_state() {
    ORIGINAL.get_or_init(|| get(0));
}

/// Puts stdin's terminal back as it was when the chat started.
pub(super) fn restore_state() {
    if let Some(Some(t)) = ORIGINAL.get() {
        set(0, t);
    }
}

/// While alive, the terminal neither echoes nor waits for Enter, and the
/// keys typed accumulate unread; [`TypeAhead::finish`] collects them and
/// puts the terminal back. Ctrl-C still sends SIGINT.
pub(crate) struct TypeAhead {
    saved: Option<libc::termios>,
}

impl TypeAhead {
    /// Quiet mode on stdin when it is a terminal (`active`), else nothing.
    pub(crate) fn start(active: bool) -> Self {
        let saved = if active { get(0) } else { None };
        if let Some(t) = saved {
            let mut quiet = t;
            quiet.c_lflag &= !(libc::ICANON | libc::ECHO);
            quiet.c_cc[libc::VMIN] = 0;
            quiet.c_cc[libc::VTIME] = 0;
            set(0, &quiet);
        }
        Self { saved }
    }

    /// The bytes typed meanwhile; the terminal is back as it was.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let mut typed = Vec::new();
        if self.saved.is_some() {
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: reads into a local buffer; VMIN = VTIME = 0 makes
                // it return at once when nothing is waiting.
                let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                typed.extend_from_slice(&buf[..n as usize]);
            }
        }
        self.restore();
        typed
    }

    fn restore(&mut self) {
        if let Some(t) = self.saved.take() {
            set(0, &t);
        }
    }
}

impl Drop for TypeAhead {
    fn drop(&mut self) {
        self.restore();
    }
}
