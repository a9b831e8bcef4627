//! Noticing that Xen tore our ring down under us (`F_DETACHED`): taken over
//! by another consumer, unregistered by someone else, or the domain dying.

use std::fmt;

use serde::Serialize;
use xen_mem_event::{Backend, Error, EventType, Ring};

use crate::ToolError;

/// Why a ring was detached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Another consumer registered the type with takeover.
    TakenOver,
    /// Someone unregistered the ring.
    Unregistered,
    /// The domain is dying or gone.
    DomainGone,
}

/// The report of a detached ring: one line (or one JSON object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename = "detached")]
pub struct Detached {
    /// The domain.
    pub domid: u16,
    /// The ring.
    #[serde(rename = "type", serialize_with = "crate::detach::ty")]
    pub ty: EventType,
    /// Why.
    pub cause: Cause,
}

pub(crate) fn ty<S: serde::Serializer>(t: &EventType, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

impl fmt::Display for Detached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d, t) = (self.domid, self.ty);
        match self.cause {
            Cause::TakenOver => write!(
                f,
                "d{d} {t}: the ring was taken over by another consumer; detached"
            ),
            Cause::Unregistered => write!(
                f,
                "d{d} {t}: the ring was unregistered by someone else; detached"
            ),
            Cause::DomainGone => write!(f, "d{d} {t}: domain destroyed; detached"),
        }
    }
}

impl Detached {
    /// Whether the tool should exit with a failure (someone else took the
    /// ring away) rather than success (the domain went away).
    pub fn is_failure(&self) -> bool {
        self.cause != Cause::DomainGone
    }

    /// The `ended` field of a tool's summary.
    pub fn ended(&self) -> &'static str {
        match self.cause {
            Cause::TakenOver => "taken over",
            Cause::Unregistered => "unregistered",
            Cause::DomainGone => "domain destroyed",
        }
    }
}

/// After a ring operation failed: a ring Xen detached under us reads as
/// broken, so if that is why, the report instead of the error.
pub fn after_error<B: Backend>(ring: &Ring<B>, e: ToolError) -> Result<Detached, ToolError> {
    match e {
        ToolError::Xen(ref x) if x.is_broken() => check(ring).ok_or(e),
        e => Err(e),
    }
}

/// If Xen detached `ring`, why (asking `GET_INFO`: a dying or destroyed
/// domain answers `ESRCH`, a ring registered again is a takeover, no ring
/// is an unregister).
pub fn check<B: Backend>(ring: &Ring<B>) -> Option<Detached> {
    if !ring.is_detached() {
        return None;
    }
    let cause = match ring.info() {
        Ok(_) => Cause::TakenOver,
        Err(Error::NotRegistered { .. }) => Cause::Unregistered,
        Err(_) => Cause::DomainGone,
    };
    Some(Detached {
        domid: ring.domid(),
        ty: ring.event_type(),
        cause,
    })
}
