//! `register` and `unregister`: what they report.

use std::fmt;

use serde::Serialize;
use xen_mem_event::EventType;

/// What `register` and `unregister` did to one ring.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdminEvent {
    /// A ring was registered and left registered.
    Registered {
        /// The target domain.
        domid: u16,
        /// The event type.
        #[serde(rename = "type", serialize_with = "crate::detach::ty")]
        ty: EventType,
        /// Its event channel.
        port: u32,
        /// Frames, the header's included.
        frames: u32,
        /// Slots.
        slots: u32,
        /// The owner token (for `unregister --token`).
        token: u64,
    },
    /// A ring was unregistered.
    Unregistered {
        /// The target domain.
        domid: u16,
        /// The event type.
        #[serde(rename = "type", serialize_with = "crate::detach::ty")]
        ty: EventType,
        /// Whether it was taken over first (no token given).
        took_over: bool,
    },
}

impl fmt::Display for AdminEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminEvent::Registered {
                domid,
                ty,
                port,
                frames,
                slots,
                token,
            } => write!(
                f,
                "d{domid} {ty}: registered, port {port} frames {frames} slots {slots} \
                 token {token}"
            ),
            AdminEvent::Unregistered {
                domid,
                ty,
                took_over,
            } => {
                let how = if *took_over {
                    " (taken over first)"
                } else {
                    ""
                };
                write!(f, "d{domid} {ty}: unregistered{how}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_model_two_forms() -> Result<(), serde_json::Error> {
        let e = AdminEvent::Registered {
            domid: 7,
            ty: EventType::SharingInvalidate,
            port: 9,
            frames: 2,
            slots: 128,
            token: 30,
        };
        assert_eq!(
            serde_json::to_string(&e)?,
            concat!(
                r#"{"kind":"registered","domid":7,"type":"SHARING_INVALIDATE","#,
                r#""port":9,"frames":2,"slots":128,"token":30}"#
            )
        );
        assert_eq!(
            e.to_string(),
            "d7 SHARING_INVALIDATE: registered, port 9 frames 2 slots 128 token 30"
        );
        let e = AdminEvent::Unregistered {
            domid: 7,
            ty: EventType::SharingOom,
            took_over: true,
        };
        assert_eq!(
            serde_json::to_string(&e)?,
            r#"{"kind":"unregistered","domid":7,"type":"SHARING_OOM","took_over":true}"#
        );
        assert_eq!(
            e.to_string(),
            "d7 SHARING_OOM: unregistered (taken over first)"
        );
        Ok(())
    }
}
