//! The tools' logger: the library's `log` warnings (a failed unregister, a
//! failed final kick, an unreadable domain list) reach the operator.
//!
//! On a terminal or a pipe: `env_logger` on stderr, `xen-mem-event: LEVEL
//! target: message`.  Under systemd (stderr is the journal stream named by
//! `$JOURNAL_STREAM`): one line per record with the sd-daemon priority
//! prefix (`<4>` for a warning), which journald turns into the entry's
//! priority (`journalctl -p warning`), and no timestamp or program name of
//! our own (journald adds both).  `RUST_LOG` chooses the level either way
//! (default: warnings).

use std::io::Write;

use log::Level;

/// The sd-daemon prefix of a record of `level` (syslog priorities:
/// 3 error, 4 warning, 6 info, 7 debug).
pub fn priority_prefix(level: Level) -> &'static str {
    match level {
        Level::Error => "<3>",
        Level::Warn => "<4>",
        Level::Info => "<6>",
        Level::Debug | Level::Trace => "<7>",
    }
}

/// Is stderr the journal stream?  `journal_stream` is `$JOURNAL_STREAM`
/// (`DEVICE:INODE`, as systemd sets it for a service whose output goes to
/// the journal), `stderr` the device and inode of our stderr.  A child of
/// the service whose stderr was redirected inherits the variable but not
/// the stream: then this is false.
pub fn is_journal_stream(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(value), Some((dev, ino))) = (journal_stream, stderr) else {
        return false;
    };
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// Device and inode of stderr, if it can be stat'ed.
fn stderr_id() -> Option<(u64, u64)> {
    let st = rustix::fs::fstat(std::io::stderr()).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// Installs the logger (once, at start).
pub fn init() {
    let journal = is_journal_stream(std::env::var("JOURNAL_STREAM").ok().as_deref(), stderr_id());
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    b.target(env_logger::Target::Stderr);
    if journal {
        b.format(|f, r| {
            writeln!(
                f,
                "{}{}: {}",
                priority_prefix(r.level()),
                r.target(),
                r.args()
            )
        });
    } else {
        b.format(|f, r| {
            writeln!(
                f,
                "xen-mem-event: {} {}: {}",
                r.level(),
                r.target(),
                r.args()
            )
        });
    }
    // A second call (tests) keeps the first logger.
    let _ = b.try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(is_journal_stream(Some("8:12345"), Some((8, 12345))));
        assert!(!is_journal_stream(Some("8:12345"), Some((8, 12346))));
        assert!(!is_journal_stream(Some("9:12345"), Some((8, 12345))));
        assert!(!is_journal_stream(None, Some((8, 12345))));
        assert!(!is_journal_stream(Some("8:12345"), None));
        assert!(!is_journal_stream(Some("garbage"), Some((8, 12345))));
        assert!(!is_journal_stream(Some(""), Some((0, 0))));
    }

    #[test]
    fn priorities_are_syslog_levels() {
        assert_eq!(priority_prefix(Level::Error), "<3>");
        assert_eq!(priority_prefix(Level::Warn), "<4>");
        assert_eq!(priority_prefix(Level::Info), "<6>");
        assert_eq!(priority_prefix(Level::Debug), "<7>");
        assert_eq!(priority_prefix(Level::Trace), "<7>");
    }
}
