//! Signals. Ctrl-C (SIGINT) while an answer is generated stops the answer
//! (kept, marked as interrupted); a second one quits at once. SIGTERM and
//! SIGHUP stop the answer the same way, let the chat save it, and then quit
//! (status 128 + the signal). While nothing is in progress (waiting for
//! input) any of them quits at once: everything is already saved.
//!
//! The main thread marks each piece of work ([`Busy`]); the signal thread
//! only ever exits while no work is in progress, so a session file is never
//! left behind a turn that was accepted.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};

static INTERRUPT: AtomicBool = AtomicBool::new(false);
static GENERATING: AtomicBool = AtomicBool::new(false);
/// IDLE, BUSY or EXITING.
static STATE: AtomicU8 = AtomicU8::new(IDLE);
/// A terminating signal received while busy: exit with it once the work is saved.
static EXIT_SIGNAL: AtomicI32 = AtomicI32::new(0);

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const EXITING: u8 = 2;

#[cfg(unix)]
const SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Installs the handler for SIGINT, SIGTERM and SIGHUP (once). Call it after
/// the line editor is created: on a terminal the editor replaces SIGINT's
/// handler while it reads, and restores ours afterwards.
pub(super) fn install_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(unix)]
        {
            crate::cli::chat::terminal::remember_state();
            match signal_hook::iterator::Signals::new(SIGNALS) {
                Ok(mut signals) => {
                    std::thread::spawn(move || {
                        for sig in signals.forever() {
                            on_signal(sig);
                        }
                    });
                }
                Err(e) => eprintln!("warning: cannot handle signals: {e}"),
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(e) = ctrlc::set_handler(|| on_signal(2)) {
                eprintln!("warning: cannot handle Ctrl-C: {e}");
            }
        }
    });
}

fn on_signal(sig: i32) {
    let terminating = sig != 2; // SIGINT is 2 everywhere
    if STATE
        .compare_exchange(IDLE, EXITING, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        exit_now(sig);
    }
    // Work in progress: stop the answer; a terminating signal also asks the
    // main thread to quit once it has saved. A repeated signal quits now.
    let repeated = INTERRUPT.swap(true, Ordering::SeqCst);
    if terminating {
        let first = EXIT_SIGNAL.swap(sig, Ordering::SeqCst) == 0;
        if first {
            return;
        }
    } else if GENERATING.load(Ordering::SeqCst) && !repeated {
        return;
    } else if !repeated && EXIT_SIGNAL.load(Ordering::SeqCst) == 0 {
        // Ctrl-C during a command or between an answer and its save: the
        // work finishes, nothing to stop.
        return;
    }
    exit_now(sig);
}

fn exit_now(sig: i32) -> ! {
    let _ = std::io::stdout().flush();
    #[cfg(unix)]
    crate::cli::chat::terminal::restore_state();
    // Not eprintln!: after SIGHUP the terminal may be gone, and a failed
    // write must not stop the exit.
    let _ = writeln!(std::io::stderr());
    std::process::exit(128 + sig);
}

pub(super) fn flag() -> &'static AtomicBool {
    &INTERRUPT
}

/// A piece of work in progress (a turn, a command): a signal that arrives
/// meanwhile waits for it to end (see [`Busy::finish`]).
pub(super) struct Busy(());

impl Busy {
    /// Marks the work; None when a signal is already ending the process.
    pub(super) fn start() -> Self {
        if STATE
            .compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // The signal thread is exiting: wait for it.
            loop {
                std::thread::park();
            }
        }
        INTERRUPT.store(false, Ordering::SeqCst);
        Busy(())
    }

    /// Ends the work: quits now (status 128 + signal) if SIGTERM or SIGHUP
    /// arrived meanwhile, after `before_exit` (the chat's last words).
    pub(super) fn finish(self, before_exit: impl FnOnce(i32)) {
        let sig = EXIT_SIGNAL.load(Ordering::SeqCst);
        if sig != 0 {
            before_exit(sig);
            exit_now(sig);
        }
        drop(self);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = STATE.compare_exchange(BUSY, IDLE, Ordering::SeqCst, Ordering::SeqCst);
        if EXIT_SIGNAL.load(Ordering::SeqCst) != 0
            && STATE
                .compare_exchange(IDLE, EXITING, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            exit_now(EXIT_SIGNAL.load(Ordering::SeqCst));
        }
    }
}

/// The name of a terminating signal, for the last line printed.
pub(super) fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// Marks a generation in progress (Ctrl-C then stops it instead of quitting).
pub(super) struct Generating;

impl Generating {
    pub(super) fn start() -> Self {
        GENERATING.store(true, Ordering::SeqCst);
        Self
    }
}

impl Drop for Generating {
    fn drop(&mut self) {
        GENERATING.store(false, Ordering::SeqCst);
    }
}
