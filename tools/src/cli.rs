//! The command line of `xen-mem-event`: the clap definitions, in one
//! place for the binary and for the generator of its man pages and shell
//! completions (`xme-docgen`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use xen_mem_event::{EventType, Token};

use crate::secs;

pub const EXAMPLES: &str = "\
Examples:
  xen-mem-event status                      rings of every domain
  xen-mem-event status --domain guest1 --json
  xen-mem-event pager --domain 3 --step 4096 --limit 262144
  xen-mem-event pager --domain 3 --exec /usr/local/sbin/free-memory -- --quiet
  xen-mem-event watch --domain 3 --batch 256 --write-handles /run/stale-handles
  xen-mem-event pager --all --step 4096      a pager for every HVM domain, as they come
  xen-mem-event share --all --pages-per-sec 50000 --json
  xen-mem-event unregister --domain 3 --type oom     (recovery: takes over first)
  xen-mem-event unregister --domain 3 --type oom --token 42
  xen-mem-event register --domain 3 --type invalidate --takeover";

/// Per-event-type memory event rings of Xen, from dom0.
///
/// Every event type of a domain has a ring of its own, with its own
/// consumer: the OOM pager and the invalidate watcher are separate
/// processes that never wait on each other.  Needs a hypervisor with the
/// xen-mem-event series, and root in dom0.
#[derive(Debug, Parser)]
#[command(name = "xen-mem-event", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Print JSON Lines (one object per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Show the rings registered for one domain or all domains.
    ///
    /// For each ring: type, consumer domain, frames, slots, and the
    /// counters Xen keeps (produced, consumed, lost, bad responses,
    /// notifications, vCPUs paused now) and its state.
    Status {
        /// Domain id or name (default: every domain).
        #[arg(long, short)]
        domain: Option<String>,
    },
    /// Attach to the SHARING_OOM ring and free memory for each event.
    ///
    /// For each OOM event (a vCPU paused because unsharing a page found no
    /// memory) the policy frees memory, then the pager answers, which
    /// wakes the vCPU.  If the policy fails, the request stays pending and
    /// is retried with backoff (the vCPU stays paused, the guest is not
    /// crashed) unless --on-failure says otherwise.  Ctrl-C answers what
    /// is pending, unregisters and exits; a second Ctrl-C exits at once.
    Pager(PagerArgs),
    /// Attach to the SHARING_INVALIDATE ring and report invalidations.
    ///
    /// Consumes records in batches (one notification per --batch records,
    /// at most half the ring: a larger --batch is clamped, and said so),
    /// prints a summary line per interval (or every record with
    /// --records), reports how many records Xen dropped because the ring
    /// was full, and keeps the set of handles seen invalidated.
    Watch(WatchArgs),
    /// Share identical pages of guests (a KSM-style sharing daemon).
    ///
    /// Scans the managed domains' memory through read-only mappings,
    /// shares identical pages within and across domains (nominate, compare
    /// byte for byte, share), and keeps its table fresh by applying each
    /// domain's SHARING_INVALIDATE ring.  Memory sharing is enabled on each
    /// managed domain.  Prints a status line per --interval and a summary;
    /// Ctrl-C unregisters every ring and exits.
    Share(crate::share::ShareArgs),
    /// Register a ring and leave it registered (scripts, recovery).
    ///
    /// With --takeover, replace a consumer that is still registered (e.g.
    /// a process that died): the vCPUs it paused are released and their
    /// faults raised again on the new ring.  Prints the owner token, which
    /// `unregister --token` takes.
    Register {
        #[command(flatten)]
        target: Target,
        /// Data frames per array (power of two, 1-64).
        #[arg(long, default_value_t = 1)]
        frames: u32,
        /// Records per notification (invalidate rings only; Xen clamps it
        /// to half the ring and refuses more than the ring).
        #[arg(long)]
        batch: Option<u32>,
        /// Take the ring over from its current consumer.
        #[arg(long)]
        takeover: bool,
    },
    /// Tear a ring down, whoever its consumer (recovery).
    ///
    /// Every vCPU the ring paused is released.  With --token (as printed
    /// by `register`), only that registration is unregistered: if the ring
    /// has since been taken over, nothing is done and the command fails.
    /// Without --token, the ring is first taken over explicitly (its
    /// current consumer, if alive, notices that it was taken over), then
    /// unregistered with the fresh token.
    Unregister {
        #[command(flatten)]
        target: Target,
        /// The owner token of the registration to unregister (from
        /// `register`).
        #[arg(long)]
        token: Option<Token>,
    },
}

#[derive(Debug, Args)]
pub struct Target {
    /// Domain id or name.
    #[arg(long, short)]
    pub domain: String,
    /// The ring.
    #[arg(long = "type", short = 't', value_enum)]
    pub ty: TypeArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TypeArg {
    /// SHARING_OOM (synchronous).
    Oom,
    /// SHARING_INVALIDATE (asynchronous).
    Invalidate,
}

impl From<TypeArg> for EventType {
    fn from(t: TypeArg) -> EventType {
        match t {
            TypeArg::Oom => EventType::SharingOom,
            TypeArg::Invalidate => EventType::SharingInvalidate,
        }
    }
}

#[derive(Debug, Args)]
pub struct PagerArgs {
    /// Domain id or name.
    #[arg(long, short, required_unless_present = "all", conflicts_with = "all")]
    pub domain: Option<String>,
    /// Every HVM domain: one pager process (with these options) per
    /// domain, started for each domain as it appears (a xenstore watch),
    /// gone with it.
    #[arg(long)]
    pub all: bool,
    /// If the domain does not exist yet, wait for it to appear (for a
    /// service started before its guest).
    #[arg(long, conflicts_with = "all")]
    pub wait: bool,
    /// Raise the domain's allowance by this many KiB per event...
    #[arg(long, default_value_t = 1024, conflicts_with = "exec")]
    pub step: u64,
    /// ...up to this many KiB (default: the allowance at start + 256 MiB).
    #[arg(long, conflicts_with = "exec")]
    pub limit: Option<u64>,
    /// Instead, run this command per event (XME_DOMID, XME_VCPU, XME_GFN
    /// and XME_ID in its environment); answer when it succeeds.  Its
    /// arguments follow `--`: `--exec CMD -- ARG...` (they may begin with
    /// a dash).
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Arguments of the --exec command (after `--`).
    #[arg(last = true, value_name = "ARG", requires = "exec")]
    pub exec_args: Vec<String>,
    /// When memory cannot be freed: keep retrying (the vCPU stays paused),
    /// answer anyway, or crash the domain.
    #[arg(long, value_enum, default_value_t = FailureArg::Retry)]
    pub on_failure: FailureArg,
    /// Data frames per array of the ring.
    #[arg(long, default_value_t = 1)]
    pub frames: u32,
    /// Take the ring over from a consumer that is still registered.
    #[arg(long)]
    pub takeover: bool,
    /// Exit after answering this many events.
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Worker threads running the policy: requests are handled
    /// independently, so a slow policy for one vCPU never delays another.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,
    /// Raise the allowance only while Xen's free memory stays above this
    /// many MiB; below, the request waits (retried with backoff, the vCPU
    /// stays paused), or, with --exec, goes to the command (the allowance
    /// is then raised by the default step and limit first).
    #[arg(long, value_name = "MiB")]
    pub reserve: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FailureArg {
    Retry,
    Resume,
    Crash,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Domain id or name.
    #[arg(long, short, required_unless_present = "all", conflicts_with = "all")]
    pub domain: Option<String>,
    /// Every HVM domain: one watcher process (with these options) per
    /// domain, started for each domain as it appears (a xenstore watch),
    /// gone with it.
    #[arg(long)]
    pub all: bool,
    /// If the domain does not exist yet, wait for it to appear (for a
    /// service started before its guest).
    #[arg(long, conflicts_with = "all")]
    pub wait: bool,
    /// Records per notification.
    #[arg(long, default_value_t = 64)]
    pub batch: u32,
    /// Data frames of the ring (power of two, 1-64; 128 records a frame).
    #[arg(long, default_value_t = 4)]
    pub frames: u32,
    /// Print every record instead of a summary per interval.
    #[arg(long)]
    pub records: bool,
    /// Seconds between summary lines (and --write-handles updates).
    #[arg(long, default_value = "1", value_parser = secs)]
    pub interval: Duration,
    /// Keep the handles seen invalidated in this file: rewritten
    /// atomically every interval and at exit.
    #[arg(long, value_name = "FILE")]
    pub write_handles: Option<PathBuf>,
    /// Exit after this many records.
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Exit after this many seconds without records.
    #[arg(long, value_parser = secs)]
    pub idle_exit: Option<Duration>,
    /// Take the ring over from a consumer that is still registered.
    #[arg(long)]
    pub takeover: bool,
    /// Consume this many records per second at most (testing slow consumers).
    #[arg(long, hide = true)]
    pub slow: Option<u64>,
}

/// Parses the command line, with the usage errors clap cannot express.
pub fn parse() -> Result<Cli, clap::Error> {
    Cli::try_parse().and_then(validate)
}

/// Usage errors clap cannot express.
fn validate(cli: Cli) -> Result<Cli, clap::Error> {
    if let Cmd::Register {
        target,
        batch: Some(_),
        ..
    } = &cli.cmd
    {
        if matches!(target.ty, TypeArg::Oom) {
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "--batch applies to invalidate rings only, not --type oom",
            ));
        }
    }
    Ok(cli)
}

/// The clap command (for the man pages and completions).
pub fn command() -> clap::Command {
    Cli::command()
}

/// One man page: its name (`xen-mem-event-pager`) and the command it
/// documents.
#[derive(Debug)]
pub struct ManPage {
    /// The page's name, without the section.
    pub name: String,
    cmd: clap::Command,
}

impl ManPage {
    /// The page in roff.
    pub fn render(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut man = clap_mangen::Man::new(self.cmd.clone());
        if self.cmd.get_name() != self.name {
            man = man.title(self.name.clone());
        }
        man.render(w)
    }
}

/// The man pages of a built command (`Command::build` first, so that
/// subcommands carry their full usage name): `xen-mem-event(1)` and one
/// per visible subcommand, `xen-mem-event-SUB(1)`.
pub fn man_pages(cmd: &clap::Command) -> Vec<ManPage> {
    let root = cmd.get_name().to_owned();
    let mut pages = vec![ManPage {
        name: root.clone(),
        cmd: cmd.clone(),
    }];
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("{root}-{}", sub.get_name());
        pages.push(ManPage {
            cmd: sub.clone().name(name.clone()),
            name,
        });
    }
    pages
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_man_page_per_visible_subcommand() {
        let mut cmd = command();
        cmd.build();
        let pages = man_pages(&cmd);
        let names: Vec<&str> = pages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "xen-mem-event",
                "xen-mem-event-status",
                "xen-mem-event-pager",
                "xen-mem-event-watch",
                "xen-mem-event-share",
                "xen-mem-event-register",
                "xen-mem-event-unregister",
            ]
        );
        for p in &pages {
            let mut buf = Vec::new();
            p.render(&mut buf)
                .unwrap_or_else(|e| panic!("{}: {e}", p.name));
            let roff = String::from_utf8_lossy(&buf);
            assert!(roff.contains(&format!(".TH {} 1", p.name)), "{}", p.name);
        }
        let mut buf = Vec::new();
        pages[2].render(&mut buf).unwrap_or_else(|e| panic!("{e}"));
        let pager = String::from_utf8_lossy(&buf);
        assert!(pager.contains("xen\\-mem\\-event pager") && pager.contains("takeover"));
    }
}
