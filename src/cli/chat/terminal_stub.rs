//! Non-unix stand-in for `terminal.rs`: no terminal settings to keep;
//! lines typed while an answer streams stay in the console's own buffer.

pub(crate) struct TypeAhead;

impl TypeAhead {
    pub(crate) fn start(_active: bool) -> Self {
        Self
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        Vec::new()
    }
}
