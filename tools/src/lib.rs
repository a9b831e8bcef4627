//! The command-line consumers of xen-mem-event, as a library so that their
//! event loops can be tested in-process against the harness.

pub mod admin;
pub mod cli;
pub mod detach;
pub mod domains;
pub mod logging;
pub mod output;
pub mod pager;
pub mod share;
pub mod status;
pub mod stop;
pub mod supervise;
pub mod watch;

use std::fmt;
use std::io;
use std::time::Duration;

/// Everything a tool can fail with.
#[derive(Debug)]
pub enum ToolError {
    /// From Xen or the ring.
    Xen(xen_mem_event::Error),
    /// Writing output.
    Io(io::Error),
    /// Anything else, already phrased for the user.
    Other(String),
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::Xen(e) => write!(f, "{e}"),
            ToolError::Io(e) => write!(f, "output: {e}"),
            ToolError::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ToolError {}

impl From<xen_mem_event::Error> for ToolError {
    fn from(e: xen_mem_event::Error) -> Self {
        ToolError::Xen(e)
    }
}

impl From<io::Error> for ToolError {
    fn from(e: io::Error) -> Self {
        ToolError::Io(e)
    }
}

/// Seconds given on the command line as a `Duration`: non-negative and
/// finite; values too large for a `Duration` (`1e30`) saturate instead of
/// panicking as `Duration::from_secs_f64` does.
pub fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if v.is_nan() || v < 0.0 {
        return Err(format!("'{s}' is not a non-negative number of seconds"));
    }
    Ok(Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secs_saturate_and_reject_nonsense() {
        assert_eq!(secs("1e30"), Ok(Duration::MAX));
        assert_eq!(secs("inf"), Ok(Duration::MAX));
        assert_eq!(secs("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(secs("0"), Ok(Duration::ZERO));
        assert!(secs("-1").is_err());
        assert!(secs("NaN").is_err());
        assert!(secs("x").is_err());
    }
}
