//! `pager --all` and `watch --all`: one consumer process per HVM domain,
//! started for every domain that exists at start and for each one that
//! appears (xenstore's `@introduceDomain` / `@releaseDomain` watch, through
//! [`DomainSource`]).  Each child is the ordinary single-domain command
//! (`pager --domain N` with the same options), so every ring still has a
//! consumer process of its own; a child whose domain is destroyed detaches
//! by itself (its ring is flagged DETACHED) and exits 0, and the others
//! keep running.  A child that fails while its domain exists (its ring is
//! another consumer's, say) is reported once and not started again until
//! that domain goes; one that dies of a signal is started again (a few
//! times) and takes the ring over.  Ctrl-C (SIGINT or SIGTERM) is passed on to every
//! child, whose clean detach is waited for.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write;
use std::process::{Child, Command, ExitStatus};

use serde::Serialize;

use crate::domains::{DomainSource, DomainState};
use crate::output::Out;
use crate::stop::Stop;
use crate::ToolError;

/// The environment variable naming the supervisor's pid in its children:
/// a child that finds it asks the kernel for SIGTERM when its parent dies
/// (and leaves at once if it already has), so no consumer outlives its
/// supervisor.
pub const PARENT_ENV: &str = "XME_SUPERVISOR_PID";

/// The command line of the child for `domid`: the supervisor's own
/// (`argv`, program name first) with `--all` dropped and `--domain N`
/// put right after the subcommand `sub`.  Only options before a `--` are
/// looked at: what follows is `--exec`'s arguments, passed as they are.
pub fn child_args(argv: &[OsString], sub: &str, domid: u16) -> Vec<OsString> {
    let mut out = Vec::with_capacity(argv.len() + 2);
    let mut seen_sub = false;
    let mut after_dashes = false;
    for (i, a) in argv.iter().enumerate() {
        if i > 0 && !after_dashes {
            if a == "--" {
                after_dashes = true;
            } else if a == "--all" {
                continue;
            }
        }
        out.push(a.clone());
        if i > 0 && !seen_sub && !after_dashes && a == OsStr::new(sub) {
            seen_sub = true;
            out.push("--domain".into());
            out.push(domid.to_string().into());
        }
    }
    out
}

/// What the supervisor does with the domain list.
#[derive(Debug, Default)]
struct Plan {
    start: Vec<u16>,
}

/// The HVM domains that have neither a child nor a refusal.
fn plan(list: &[DomainState], running: &BTreeSet<u16>, refused: &BTreeSet<u16>) -> Plan {
    Plan {
        start: list
            .iter()
            .filter(|s| s.hvm && !running.contains(&s.domid) && !refused.contains(&s.domid))
            .map(|s| s.domid)
            .collect(),
    }
}

/// Starts the consumer for one domain.
pub trait Spawn {
    /// Starts it (stdout and stderr inherited).
    fn spawn(&mut self, domid: u16) -> std::io::Result<Child>;
}

/// Spawns `program` with [`child_args`] of `argv`.
#[derive(Debug)]
pub struct SelfSpawn {
    /// The program (this executable).
    pub program: OsString,
    /// The supervisor's command line.
    pub argv: Vec<OsString>,
    /// The subcommand (`pager`, `watch`).
    pub sub: &'static str,
}

impl Spawn for SelfSpawn {
    fn spawn(&mut self, domid: u16) -> std::io::Result<Child> {
        let args = child_args(&self.argv, self.sub, domid);
        Command::new(&self.program)
            .args(args.iter().skip(1))
            .env(PARENT_ENV, std::process::id().to_string())
            .spawn()
    }
}

/// In a child of a supervisor: SIGTERM when the supervisor dies.  Returns
/// false if it is already gone (the child should not start).
pub fn follow_parent() -> bool {
    let Some(want) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return true;
    };
    // Set first, then check: a parent dying in between is still seen.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    parent == want
}

/// Counts for the last line (`started` counts restarts too).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SuperSummary {
    /// Children started.
    pub started: u64,
    /// Children that ended because their domain went.
    pub detached: u64,
    /// Children that failed while their domain existed.
    pub refused: u64,
}

/// Runs the supervisor until stopped.
pub fn run<D: DomainSource, S: Spawn, W: Write>(
    what: &str,
    domains: &mut D,
    spawner: &mut S,
    stop: &Stop,
    out: &mut Out<W>,
) -> Result<SuperSummary, ToolError> {
    let mut sv = Supervisor {
        what,
        children: BTreeMap::new(),
        refused: BTreeSet::new(),
        respawns: BTreeMap::new(),
        sum: SuperSummary::default(),
    };
    out.note(&format!(
        "{what} --all: a {what} for every HVM domain, as they come; Ctrl-C to stop"
    ))?;
    let served = sv.serve(domains, spawner, stop, out);
    sv.stop_children(out)?;
    served?;
    let s = sv.sum;
    out.event(&SuperEvent::SupervisorSummary {
        consumer: what,
        started: s.started,
        detached: s.detached,
        failed: s.refused,
    })?;
    Ok(s)
}

/// What the supervisor reports about its consumers.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SuperEvent<'a> {
    /// A consumer was started for a domain.
    Started {
        /// The domain.
        domid: u16,
        /// `pager` or `watch`.
        consumer: &'a str,
        /// Its process.
        pid: u32,
    },
    /// A consumer could not be started.
    Failed {
        /// The domain.
        domid: u16,
        /// `pager` or `watch`.
        consumer: &'a str,
        /// Why.
        error: String,
    },
    /// A consumer was killed by a signal while its domain lives: it is
    /// started again and takes the ring over.
    Died {
        /// The domain.
        domid: u16,
        /// `pager` or `watch`.
        consumer: &'a str,
        /// How it ended (`status`: its exit code, null for a signal).
        #[serde(serialize_with = "exit_code")]
        status: ExitStatus,
    },
    /// A consumer exited: with its domain (detached), or while the domain
    /// lives (not started again until it is destroyed).
    Exited {
        /// The domain.
        domid: u16,
        /// `pager` or `watch`.
        consumer: &'a str,
        /// How it ended.
        #[serde(serialize_with = "exit_code")]
        status: ExitStatus,
        /// Whether its domain still exists.
        domain_alive: bool,
    },
    /// A consumer stopped by the supervisor (Ctrl-C).
    Stopped {
        /// The domain.
        domid: u16,
        /// `pager` or `watch`.
        consumer: &'a str,
        /// How it ended.
        #[serde(serialize_with = "exit_code")]
        status: ExitStatus,
    },
    /// The supervisor's last line.
    SupervisorSummary {
        /// `pager` or `watch`.
        consumer: &'a str,
        /// Consumers started.
        started: u64,
        /// Consumers that detached with their domain.
        detached: u64,
        /// Consumers that could not start or exited while their domain lived.
        failed: u64,
    },
}

fn exit_code<S: serde::Serializer>(st: &ExitStatus, s: S) -> Result<S::Ok, S::Error> {
    st.code().serialize(s)
}

impl fmt::Display for SuperEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuperEvent::Started {
                domid,
                consumer,
                pid,
            } => {
                write!(f, "d{domid}: {consumer} started (pid {pid})")
            }
            SuperEvent::Failed {
                domid,
                consumer,
                error,
            } => {
                write!(f, "d{domid}: cannot start a {consumer}: {error}")
            }
            SuperEvent::Died {
                domid,
                consumer,
                status,
            } => write!(
                f,
                "d{domid}: {consumer} died ({status}); starting it again, it takes the ring over"
            ),
            SuperEvent::Exited {
                domid,
                consumer,
                status,
                domain_alive: true,
            } => write!(
                f,
                "d{domid}: {consumer} exited ({status}) while the domain exists; not restarted \
                 until it is destroyed"
            ),
            SuperEvent::Exited {
                domid, consumer, ..
            } => {
                write!(f, "d{domid}: {consumer} detached, domain destroyed")
            }
            SuperEvent::Stopped {
                domid,
                consumer,
                status,
            } => {
                write!(f, "d{domid}: {consumer} stopped ({status})")
            }
            SuperEvent::SupervisorSummary {
                consumer,
                started,
                detached,
                failed,
            } => write!(
                f,
                "{consumer} --all stopped: {started} started, {detached} detached with their \
                 domain, {failed} failed"
            ),
        }
    }
}

/// How many times a domain's consumer is started again after dying.
pub const MAX_RESPAWNS: u32 = 3;

struct Supervisor<'a> {
    what: &'a str,
    children: BTreeMap<u16, Child>,
    refused: BTreeSet<u16>,
    respawns: BTreeMap<u16, u32>,
    sum: SuperSummary,
}

impl Supervisor<'_> {
    fn serve<D: DomainSource, S: Spawn, W: Write>(
        &mut self,
        domains: &mut D,
        spawner: &mut S,
        stop: &Stop,
        out: &mut Out<W>,
    ) -> Result<(), ToolError> {
        let mut changed = true; // the domains existing at start
        while !stop.requested() {
            if changed {
                match domains.domains() {
                    Ok(list) => self.apply(&list, spawner, out)?,
                    Err(e) => log::warn!("reading the domain list: {e}"),
                }
            }
            let respawn = self.reap(domains, out)?;
            // Readable watch, a signal, or 200 ms (children's exits are
            // looked for then).
            let mut fds = [rustix::event::PollFd::from_borrowed_fd(
                domains.watch_fd(),
                rustix::event::PollFlags::IN,
            )];
            let ts = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 200_000_000,
            };
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(ToolError::Io(e.into())),
            }
            changed = respawn
                || domains.domains_changed().unwrap_or_else(|e| {
                    log::warn!("xenstore watch: {e}");
                    true
                });
        }
        Ok(())
    }

    /// Starts a child for each new HVM domain; forgets refusals of
    /// domains that are gone.
    fn apply<S: Spawn, W: Write>(
        &mut self,
        list: &[DomainState],
        spawner: &mut S,
        out: &mut Out<W>,
    ) -> Result<(), ToolError> {
        let live: BTreeSet<u16> = list.iter().map(|s| s.domid).collect();
        self.refused.retain(|d| live.contains(d));
        let running: BTreeSet<u16> = self.children.keys().copied().collect();
        for domid in plan(list, &running, &self.refused).start {
            match spawner.spawn(domid) {
                Ok(child) => {
                    self.sum.started += 1;
                    out.event(&SuperEvent::Started {
                        domid,
                        consumer: self.what,
                        pid: child.id(),
                    })?;
                    self.children.insert(domid, child);
                }
                Err(e) => {
                    self.refused.insert(domid);
                    self.sum.refused += 1;
                    out.event(&SuperEvent::Failed {
                        domid,
                        consumer: self.what,
                        error: e.to_string(),
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Collects the children that exited.
    /// A child killed by a signal (it died: it did not exit) while its
    /// domain lives is started again, [`MAX_RESPAWNS`] times at most per
    /// domain: Xen hands the ring of a consumer whose event channel closed
    /// to the next registration, releasing the vCPUs it paused.  Returns
    /// whether one is to be started again.
    fn reap<D: DomainSource, W: Write>(
        &mut self,
        domains: &mut D,
        out: &mut Out<W>,
    ) -> Result<bool, ToolError> {
        let mut ended: Vec<(u16, ExitStatus)> = Vec::new();
        for (&domid, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                ended.push((domid, status));
            }
        }
        if ended.is_empty() {
            return Ok(false);
        }
        let mut respawn = false;
        let live: BTreeSet<u16> = domains
            .domains()
            .map(|l| l.iter().map(|s| s.domid).collect())
            .unwrap_or_default();
        for (domid, status) in ended {
            self.children.remove(&domid);
            let killed = status.code().is_none();
            let respawns = self.respawns.entry(domid).or_insert(0);
            if live.contains(&domid) && killed && *respawns < MAX_RESPAWNS {
                *respawns += 1;
                respawn = true;
                out.event(&SuperEvent::Died {
                    domid,
                    consumer: self.what,
                    status,
                })?;
            } else if live.contains(&domid) {
                // Not started again while this domain exists.
                self.refused.insert(domid);
                self.sum.refused += 1;
                out.event(&SuperEvent::Exited {
                    domid,
                    consumer: self.what,
                    status,
                    domain_alive: true,
                })?;
            } else {
                self.sum.detached += 1;
                out.event(&SuperEvent::Exited {
                    domid,
                    consumer: self.what,
                    status,
                    domain_alive: false,
                })?;
            }
        }
        self.respawns.retain(|d, _| live.contains(d));
        Ok(respawn)
    }

    /// SIGTERM to every child (a clean detach each), then waits for them.
    fn stop_children<W: Write>(&mut self, out: &mut Out<W>) -> Result<(), ToolError> {
        for child in self.children.values() {
            if let Some(pid) = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for (domid, mut child) in std::mem::take(&mut self.children) {
            let status = child.wait()?;
            out.event(&SuperEvent::Stopped {
                domid,
                consumer: self.what,
                status,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn events_exit_status_as_code_and_text() -> Result<(), serde_json::Error> {
        use std::os::unix::process::ExitStatusExt;
        let gone = SuperEvent::Exited {
            domid: 3,
            consumer: "watch",
            status: ExitStatus::from_raw(0),
            domain_alive: false,
        };
        assert_eq!(
            serde_json::to_string(&gone)?,
            r#"{"kind":"exited","domid":3,"consumer":"watch","status":0,"domain_alive":false}"#
        );
        assert_eq!(gone.to_string(), "d3: watch detached, domain destroyed");
        let killed = SuperEvent::Died {
            domid: 3,
            consumer: "pager",
            status: ExitStatus::from_raw(9),
        };
        let j = serde_json::to_value(&killed)?;
        assert_eq!(
            (j["kind"].as_str(), j["status"].is_null()),
            (Some("died"), true)
        );
        assert!(killed.to_string().starts_with("d3: pager died (signal: 9"));
        Ok(())
    }

    #[test]
    fn child_args_put_the_domain_after_the_subcommand_and_drop_all() {
        assert_eq!(
            child_args(
                &os(&["xme", "--json", "pager", "--all", "--step", "4"]),
                "pager",
                7
            ),
            os(&["xme", "--json", "pager", "--domain", "7", "--step", "4"])
        );
        assert_eq!(
            child_args(&os(&["xme", "watch", "--batch", "8", "--all"]), "watch", 12),
            os(&["xme", "watch", "--domain", "12", "--batch", "8"])
        );
        // --exec's own arguments are left alone, even `--all` or `pager`.
        assert_eq!(
            child_args(
                &os(&["xme", "pager", "--all", "--exec", "f", "--", "--all", "pager"]),
                "pager",
                3
            ),
            os(&["xme", "pager", "--domain", "3", "--exec", "f", "--", "--all", "pager"])
        );
    }

    #[test]
    fn plan_starts_new_hvm_domains_only() {
        let list = [
            DomainState {
                domid: 1,
                hvm: true,
            },
            DomainState {
                domid: 2,
                hvm: true,
            },
            DomainState {
                domid: 3,
                hvm: false,
            },
            DomainState {
                domid: 4,
                hvm: true,
            },
            DomainState {
                domid: 5,
                hvm: true,
            },
        ];
        let running = BTreeSet::from([2]);
        let refused = BTreeSet::from([4]);
        assert_eq!(plan(&list, &running, &refused).start, [1, 5]);
    }
}
