//! `status`: the rings registered for domains.

use serde::Serialize;
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

/// One ring as `status --json` reports it (the human form is [`table`]).
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename = "ring")]
pub struct RingRow {
    domid: u16,
    #[serde(rename = "type")]
    ty: String,
    consumer: u16,
    frames: u32,
    slots: u32,
    batch: u32,
    port: u32,
    produced: u64,
    consumed: u64,
    lost: u64,
    bad_responses: u64,
    notifications: u64,
    paused_vcpus: u32,
    parked_vcpus: u32,
    connected: bool,
    broken: bool,
    consumer_gone: bool,
}

impl From<&Row> for RingRow {
    fn from(r: &Row) -> Self {
        let i = &r.info;
        RingRow {
            domid: r.domid,
            ty: r.ty.to_string(),
            consumer: i.consumer,
            frames: i.nr_frames,
            slots: i.nr_slots,
            batch: i.batch,
            port: i.port,
            produced: i.produced,
            consumed: i.consumed,
            lost: i.lost,
            bad_responses: i.bad_responses,
            notifications: i.notifications,
            paused_vcpus: i.paused_vcpus,
            parked_vcpus: i.parked_vcpus,
            connected: i.state.connected(),
            broken: i.state.broken(),
            consumer_gone: i.state.consumer_gone(),
        }
    }
}
