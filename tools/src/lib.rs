//! The command-line consumers of xen-mem-event, as a library so that their
//! event loops can be tested in-process against the harness.

pub mod output;
pub mod pager;
pub mod status;
pub mod stop;
pub mod watch;

use std::fmt;
use std::io;

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
