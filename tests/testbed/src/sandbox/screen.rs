//! How the sandbox shows its status: on a terminal, one screen redrawn in place every
//! second (cursor home, each line cleared to its end, the rest of the screen cleared, so
//! nothing scrolls or flickers), with the latest command messages kept under the table;
//! anywhere else (a pipe, a file, CI logs), plain lines only: a `--- Ns` table every 5 s
//! and messages as they happen, never an escape sequence.
//!
//! Owns the frame text only; the caller prints it. Never reads the status itself.

use std::collections::VecDeque;
use std::time::Duration;

use crate::sandbox::status::{SandboxStatus, table};

/// Plain output prints the table this often (a terminal is redrawn every tick).
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// Messages kept under the table on a terminal.
const KEPT_MESSAGES: usize = 6;

/// Cursor to the top-left corner.
const HOME: &str = "\x1b[H";
/// Clear from the cursor to the end of the line.
const CLEAR_LINE: &str = "\x1b[K";
/// Clear from the cursor to the end of the screen.
const CLEAR_BELOW: &str = "\x1b[J";

pub struct Screen {
    interactive: bool,
    /// Elapsed time of the last plain table, if any.
    last_plain: Option<Duration>,
    messages: VecDeque<String>,
}

impl Screen {
    /// `interactive`: stdout is a terminal.
    pub fn new(interactive: bool) -> Screen {
        Screen {
            interactive,
            last_plain: None,
            messages: VecDeque::new(),
        }
    }

    /// A message for the operator (a command's outcome). Plain output returns it to
    /// print now; a terminal keeps it under the table of the next frames.
    pub fn message(&mut self, text: String) -> Option<String> {
        if !self.interactive {
            return Some(text + "\n");
        }
        if self.messages.len() >= KEPT_MESSAGES {
            self.messages.pop_front();
        }
        self.messages.push_back(text);
        None
    }

    /// What to print for this tick, if anything.
    pub fn frame(&mut self, status: &SandboxStatus, elapsed: Duration) -> Option<String> {
        if !self.interactive {
            if self
                .last_plain
                .is_some_and(|last| elapsed.saturating_sub(last) < PLAIN_EVERY)
            {
                return None;
            }
            self.last_plain = Some(elapsed);
            return Some(format!(
                "--- {}s\n{}",
                status.elapsed_seconds,
                table(status)
            ));
        }
        let mut body = table(status);
        body.push('\n');
        for m in &self.messages {
            body.push_str(m);
            body.push('\n');
        }
        body.push_str(&format!(
            "{}s elapsed; Ctrl-C stops.\n",
            status.elapsed_seconds
        ));
        let mut out = String::from(HOME);
        for line in body.lines() {
            out.push_str(line);
            out.push_str(CLEAR_LINE);
            out.push('\n');
        }
        out.push_str(CLEAR_BELOW);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(elapsed: u64) -> SandboxStatus {
        SandboxStatus {
            state_dir: "/tmp/s".into(),
            elapsed_seconds: elapsed,
            clusters: Vec::new(),
            faults: Vec::new(),
        }
    }

    #[test]
    fn plain_output_is_lines_every_five_seconds_without_escapes() {
        let mut screen = Screen::new(false);
        let first = screen.frame(&status(0), Duration::ZERO).unwrap();
        assert!(first.starts_with("--- 0s\n"), "{first}");
        assert!(screen.frame(&status(1), Duration::from_secs(1)).is_none());
        assert!(screen.frame(&status(4), Duration::from_secs(4)).is_none());
        let later = screen.frame(&status(5), Duration::from_secs(5)).unwrap();
        assert!(later.starts_with("--- 5s\n"), "{later}");
        let message = screen.message("restarted at 6s: cluster-2's peerd".into());
        assert_eq!(
            message.as_deref(),
            Some("restarted at 6s: cluster-2's peerd\n")
        );
        for text in [first, later] {
            assert!(!text.contains('\x1b'), "{text:?}");
        }
    }

    #[test]
    fn a_terminal_is_redrawn_in_place_with_recent_messages() {
        let mut screen = Screen::new(true);
        assert!(screen.message("fault injected at 3s".into()).is_none());
        for i in 0..10 {
            screen.message(format!("m{i}"));
        }
        let frame = screen.frame(&status(7), Duration::from_secs(7)).unwrap();
        assert!(frame.starts_with(HOME), "{frame:?}");
        assert!(frame.ends_with(CLEAR_BELOW), "{frame:?}");
        assert!(frame.contains("m9\x1b[K\n") && frame.contains("m4\x1b[K\n"));
        assert!(!frame.contains("m3\x1b") && !frame.contains("fault injected"));
        assert!(frame.contains("7s elapsed; Ctrl-C stops."));
        // Every tick redraws.
        assert!(screen.frame(&status(8), Duration::from_secs(8)).is_some());
    }
}
