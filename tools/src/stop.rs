//! Ctrl-C handling: the first SIGINT/SIGTERM asks the tool to detach
//! cleanly (answer what is pending, unregister, unmap); a second one exits
//! at once.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Exit status after a second signal (128 + SIGINT).
pub const FORCED_EXIT: i32 = 130;

/// A stop request, set by a signal or by hand.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
}

impl Stop {
    /// A flag nobody sets but `request` (tests).
    pub fn new() -> Stop {
        Stop::default()
    }

    /// A flag set by SIGINT and SIGTERM; a second signal exits the process.
    pub fn install() -> io::Result<Stop> {
        let stop = Stop::new();
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // The conditional exit first: it only fires once the flag is set,
            // i.e. on the second signal.
            signal_hook::flag::register_conditional_shutdown(
                sig,
                FORCED_EXIT,
                Arc::clone(&stop.flag),
            )?;
            signal_hook::flag::register(sig, Arc::clone(&stop.flag))?;
        }
        Ok(stop)
    }

    /// Ask for a clean stop.
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Has a stop been asked for?
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}
