//! Ctrl-C: while an answer is generated it stops the answer (kept, marked
//! as interrupted); at any other time it quits, as without a handler.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPT: AtomicBool = AtomicBool::new(false);
static GENERATING: AtomicBool = AtomicBool::new(false);

/// Ctrl-C while generating stops the answer (a second one quits); at any
/// other time it quits with status 130, as without a handler. (While the
/// line editor reads, the terminal is in raw mode and Ctrl-C is a key.)
pub(super) fn install_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let r = ctrlc::set_handler(|| {
            if GENERATING.load(Ordering::SeqCst) && !INTERRUPT.swap(true, Ordering::SeqCst) {
                return;
            }
            let _ = std::io::stdout().flush();
            eprintln!();
            std::process::exit(130);
        });
        if let Err(e) = r {
            eprintln!("warning: cannot handle Ctrl-C: {e}");
        }
    });
}

pub(super) fn flag() -> &'static AtomicBool {
    &INTERRUPT
}

/// Marks a generation in progress (Ctrl-C then stops it instead of quitting).
pub(super) struct Generating;

impl Generating {
    pub(super) fn start() -> Self {
        INTERRUPT.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        Self
    }
}

impl Drop for Generating {
    fn drop(&mut self) {
        GENERATING.store(false, Ordering::SeqCst);
    }
}
