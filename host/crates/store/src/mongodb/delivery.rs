//! MongoDB's delivery queue and event endpoints (see `crate::delivery`). A delivery's
//! state lives in its event's own document (`delivery_*` fields), so storing an event
//! and queueing it are one single-document write. Endpoints are `event_endpoints`, one
//! document per company, keyed by the company id as a string (so a walk in id order
//! never compares an ObjectId with a string).
//!
//! Claiming: due, unleased candidates are read in due order (ids and group keys only),
//! the first of each company and link is checked to have no earlier pending event,
//! and each is then leased with one atomic find-and-modify, which another host racing
//! for it cannot also win.

use super::{
    EVENT_DATES, EVENTS, MongoStore, corrupt, date, from_doc, id, index, store_error, to_doc,
};
use crate::delivery::{
    ClaimedDelivery, DeliveryOutcome, DeliveryState, DeliveryStatus, DeliveryStore,
    EventEndpointRecord, delivery_group,
};
use crate::{EventRecord, StoreError};
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ReturnDocument;
use std::collections::HashSet;
use time::OffsetDateTime;

const ENDPOINTS: &str = "event_endpoints";
const ENDPOINT_DATES: &[&str] = &["created_at", "updated_at"];
/// The most candidates one claim reads: a company whose endpoint is down can hold many
/// pending events behind its first, and they must not hide other companies' for long.
const MAX_CANDIDATES: i64 = 2000;

/// The `delivery_*` fields of a newly stored event (pending, due now).
pub(super) fn pending_fields(event: &EventRecord, d: &mut Document) {
    d.insert("delivery_state", DeliveryState::Pending.as_str());
    d.insert("delivery_group", delivery_group(event));
    d.insert("delivery_attempts", 0_i64);
    d.insert("delivery_next_at", date(event.received_at));
    d.insert("delivery_lease_owner", Bson::Null);
    d.insert("delivery_lease_until", Bson::Null);
}

/// The indexes the queue's queries use.
pub(super) fn event_indexes() -> Vec<mongodb::IndexModel> {
    vec![
        index(doc! {"delivery_state": 1, "delivery_next_at": 1}),
        index(
            doc! {"company_id": 1, "delivery_group": 1, "delivery_state": 1, "received_at": 1, "_id": 1},
        ),
    ]
}

fn endpoint_doc(record: &EventEndpointRecord) -> Result<Document, StoreError> {
    let mut d = to_doc(record, ENDPOINT_DATES)?;
    d.insert("_id", record.company_id.as_str());
    Ok(d)
}

fn bson_time(d: &Document, field: &str) -> Option<OffsetDateTime> {
    match d.get(field) {
        Some(Bson::DateTime(t)) => {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.timestamp_millis()) * 1_000_000)
                .ok()
        }
        _ => None,
    }
}

fn attempts(d: &Document) -> u32 {
    match d.get("delivery_attempts") {
        Some(Bson::Int64(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(Bson::Int32(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        _ => 0,
    }
}

fn hex_id(d: &Document) -> String {
    match d.get("_id") {
        Some(Bson::ObjectId(o)) => o.to_hex(),
        Some(Bson::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn status(d: &Document) -> Result<DeliveryStatus, StoreError> {
    let raw = d.get_str("delivery_state").map_err(corrupt)?;
    let state = DeliveryState::parse(raw)
        .ok_or_else(|| corrupt(format!("unknown delivery state `{raw}`")))?;
    Ok(DeliveryStatus {
        event_id: hex_id(d),
        state,
        attempts: attempts(d),
        next_attempt_at: if state == DeliveryState::Pending {
            bson_time(d, "delivery_next_at")
        } else {
            None
        },
        last_error: d.get_str("delivery_last_error").ok().map(str::to_string),
        delivered_at: bson_time(d, "delivery_delivered_at"),
    })
}

fn lease_free(now: OffsetDateTime) -> Bson {
    Bson::Array(vec![
        Bson::Document(doc! {"delivery_lease_until": null}),
        Bson::Document(doc! {"delivery_lease_until": {"$lte": date(now)}}),
    ])
}

impl DeliveryStore for MongoStore {
    async fn insert_event_endpoint(&self, record: EventEndpointRecord) -> Result<(), StoreError> {
        let d = endpoint_doc(&record)?;
        self.coll(ENDPOINTS)
            .insert_one(d)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get_event_endpoint(
        &self,
        company_id: &str,
    ) -> Result<Option<EventEndpointRecord>, StoreError> {
        self.coll(ENDPOINTS)
            .find_one(doc! {"_id": company_id})
            .await
            .map_err(store_error)?
            .map(|d| from_doc(d, ENDPOINT_DATES))
            .transpose()
    }

    async fn replace_event_endpoint_cas(
        &self,
        mut record: EventEndpointRecord,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        record.version = expected_version + 1;
        let d = endpoint_doc(&record)?;
        let r = self
            .coll(ENDPOINTS)
            .replace_one(
                doc! {"_id": record.company_id.as_str(), "version": expected_version},
                d,
            )
            .await
            .map_err(store_error)?;
        Ok(r.matched_count == 1)
    }

    async fn delete_event_endpoint(&self, company_id: &str) -> Result<bool, StoreError> {
        let r = self
            .coll(ENDPOINTS)
            .delete_one(doc! {"_id": company_id})
            .await
            .map_err(store_error)?;
        Ok(r.deleted_count == 1)
    }

    async fn scan_event_endpoints(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventEndpointRecord>, StoreError> {
        let filter = match after {
            Some(a) => doc! {"_id": {"$gt": a}},
            None => doc! {},
        };
        let cursor = self
            .coll(ENDPOINTS)
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(i64::from(limit))
            .await
            .map_err(store_error)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(store_error)?;
        docs.into_iter()
            .map(|d| from_doc(d, ENDPOINT_DATES))
            .collect()
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let events = self.coll(EVENTS);
        let cursor = events
            .find(doc! {
                "delivery_state": "pending",
                "delivery_next_at": {"$lte": date(now)},
                "$or": lease_free(now),
            })
            .sort(doc! {"delivery_next_at": 1})
            .projection(doc! {"_id": 1, "company_id": 1, "delivery_group": 1, "received_at": 1})
            .limit(MAX_CANDIDATES)
            .await
            .map_err(store_error)?;
        let candidates: Vec<Document> = cursor.try_collect().await.map_err(store_error)?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for c in candidates {
            if out.len() >= limit as usize {
                break;
            }
            let (Some(company), Some(group), Some(received), Some(eid)) = (
                c.get("company_id").cloned(),
                c.get("delivery_group").cloned(),
                c.get("received_at").cloned(),
                c.get("_id").cloned(),
            ) else {
                continue;
            };
            // Only the first candidate of a company and link can be its head.
            if !seen.insert((company.to_string(), group.to_string())) {
                continue;
            }
            let earlier = events
                .find_one(doc! {
                    "company_id": company.clone(),
                    "delivery_group": group.clone(),
                    "delivery_state": "pending",
                    "$or": [
                        {"received_at": {"$lt": received.clone()}},
                        {"received_at": received.clone(), "_id": {"$lt": eid.clone()}},
                    ],
                })
                .projection(doc! {"_id": 1})
                .await
                .map_err(store_error)?;
            if earlier.is_some() {
                continue;
            }
            let leased = events
                .find_one_and_update(
                    doc! {"_id": eid, "delivery_state": "pending", "$or": lease_free(now)},
                    doc! {"$set": {"delivery_lease_owner": owner, "delivery_lease_until": date(lease_until)}},
                )
                .return_document(ReturnDocument::After)
                .await
                .map_err(store_error)?;
            if let Some(d) = leased {
                let n = attempts(&d);
                out.push(ClaimedDelivery {
                    event: from_doc(d, EVENT_DATES)?,
                    attempts: n,
                });
            }
        }
        Ok(out)
    }

    async fn finish_delivery(
        &self,
        event_id: &str,
        owner: &str,
        outcome: DeliveryOutcome,
    ) -> Result<bool, StoreError> {
        let mut set = doc! {"delivery_lease_owner": null, "delivery_lease_until": null};
        match outcome {
            DeliveryOutcome::Delivered { at } => {
                set.insert("delivery_state", DeliveryState::Delivered.as_str());
                set.insert("delivery_delivered_at", date(at));
            }
            DeliveryOutcome::Retry {
                attempts,
                next_at,
                error,
            } => {
                set.insert("delivery_state", DeliveryState::Pending.as_str());
                set.insert("delivery_attempts", i64::from(attempts));
                set.insert("delivery_next_at", date(next_at));
                set.insert("delivery_last_error", error);
            }
            DeliveryOutcome::Parked { attempts, error } => {
                set.insert("delivery_state", DeliveryState::Parked.as_str());
                set.insert("delivery_attempts", i64::from(attempts));
                set.insert("delivery_last_error", error);
            }
            DeliveryOutcome::NoEndpoint => {
                set.insert("delivery_state", DeliveryState::NoEndpoint.as_str());
            }
        }
        let r = self
            .coll(EVENTS)
            .update_one(
                doc! {"_id": id(event_id), "delivery_lease_owner": owner},
                doc! {"$set": set},
            )
            .await
            .map_err(store_error)?;
        Ok(r.matched_count == 1)
    }

    async fn redeliver_event(
        &self,
        company_id: &str,
        event_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<DeliveryStatus>, StoreError> {
        let filter = doc! {"_id": id(event_id), "company_id": id(company_id)};
        let Some(d) = self
            .coll(EVENTS)
            .find_one(filter.clone())
            .projection(doc! {"link_id": 1})
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        // An event stored before deliveries existed has no group yet.
        let group = d.get_str("link_id").unwrap_or("").to_string();
        let updated = self
            .coll(EVENTS)
            .find_one_and_update(
                filter,
                doc! {"$set": {
                    "delivery_state": "pending",
                    "delivery_group": group,
                    "delivery_attempts": 0_i64,
                    "delivery_next_at": date(now),
                    "delivery_last_error": null,
                    "delivery_delivered_at": null,
                }},
            )
            .projection(doc! {"payload": 0})
            .return_document(ReturnDocument::After)
            .await
            .map_err(store_error)?;
        updated.map(|d| status(&d)).transpose()
    }

    async fn delivery_statuses(
        &self,
        company_id: &str,
        event_ids: &[String],
    ) -> Result<Vec<DeliveryStatus>, StoreError> {
        let ids: Vec<Bson> = event_ids.iter().map(|e| id(e)).collect();
        let cursor = self
            .coll(EVENTS)
            .find(doc! {
                "_id": {"$in": ids},
                "company_id": id(company_id),
                "delivery_state": {"$exists": true},
            })
            .projection(doc! {"payload": 0})
            .await
            .map_err(store_error)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(store_error)?;
        docs.iter().map(status).collect()
    }
}
