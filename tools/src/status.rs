//! `status`: the rings registered for domains.

use serde_json::{json, Value};
use xen_mem_event::{Backend, Error, EventType, RingInfo};

/// One ring of one domain.
#[derive(Debug)]
pub struct Row {
    /// The target domain.
    pub domid: u16,
    /// The ring.
    pub ty: EventType,
    /// Its information.
    pub info: RingInfo,
}

/// The registered rings of `domids` (domains without rings are skipped;
/// a domain that does not exist is an error if it was asked for alone).
pub fn collect<B: Backend>(backend: &B, domids: &[u16]) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::new();
    for &domid in domids {
        for ty in EventType::ALL {
            match backend.get_info(domid, ty) {
                Ok(info) => rows.push(Row { domid, ty, info }),
                Err(Error::NotRegistered { .. }) => {}
                // Listing every domain: one that went away meanwhile, or
                // cannot have rings, is skipped.
                Err(
                    e @ (Error::NoSuchDomain { .. }
                    | Error::NotSupported { .. }
                    | Error::InvalidArgument { .. }),
                ) if domids.len() > 1 => {
                    log::debug!("d{domid}: {e}");
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(rows)
}

fn state(info: &RingInfo) -> String {
    let mut s = Vec::new();
    if info.state.connected() {
        s.push("connected");
    }
    if info.state.broken() {
        s.push("BROKEN");
    }
    if info.state.consumer_gone() {
        s.push("consumer-gone");
    }
    if s.is_empty() {
        "registered".into()
    } else {
        s.join(",")
    }
}

/// The rows as a table.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "DOMID", "TYPE", "CONSUMER", "FRAMES", "SLOTS", "PRODUCED", "CONSUMED", "LOST", "BAD-RSP",
        "NOTIFY", "PAUSED", "PARKED", "STATE",
    ];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.domid.to_string(),
                r.ty.to_string(),
                r.info.consumer.to_string(),
                r.info.nr_frames.to_string(),
                r.info.nr_slots.to_string(),
                r.info.produced.to_string(),
                r.info.consumed.to_string(),
                r.info.lost.to_string(),
                r.info.bad_responses.to_string(),
                r.info.notifications.to_string(),
                r.info.paused_vcpus.to_string(),
                r.info.parked_vcpus.to_string(),
                state(&r.info),
            ]
        })
        .collect();
    crate::output::table(&header, &body)
}

/// One row as JSON.
pub fn json(r: &Row) -> Value {
    json!({
        "kind": "ring", "domid": r.domid, "type": r.ty.to_string(), "consumer": r.info.consumer,
        "frames": r.info.nr_frames, "slots": r.info.nr_slots, "batch": r.info.batch,
        "port": r.info.port,
        "produced": r.info.produced, "consumed": r.info.consumed, "lost": r.info.lost,
        "bad_responses": r.info.bad_responses, "notifications": r.info.notifications,
        "paused_vcpus": r.info.paused_vcpus, "parked_vcpus": r.info.parked_vcpus,
        "connected": r.info.state.connected(),
        "broken": r.info.state.broken(), "consumer_gone": r.info.state.consumer_gone(),
    })
}
