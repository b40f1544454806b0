//! The embedded store's delivery queue and event endpoints (see `crate::delivery`).
//! A delivery is a row of `event_deliveries` beside its event, written in the event's
//! own transaction; its `seq` is the event's, so "earlier" is the order events were
//! stored in. Claiming runs in one IMMEDIATE transaction, so two processes sharing the
//! file never lease the same delivery.

use super::{EmbeddedStore, docs, millis, unavailable};
use crate::delivery::{
    ClaimedDelivery, DeliveryOutcome, DeliveryState, DeliveryStatus, DeliveryStore,
    EventEndpointRecord, delivery_group,
};
use crate::{EventRecord, StoreError};
use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;

/// Tables and indexes, created idempotently at open after the main schema. Events
/// stored before this table existed have no delivery row: they are not delivered
/// unless redelivered through the API.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS event_deliveries (
    event_id     TEXT PRIMARY KEY,
    company_id   TEXT NOT NULL,
    grp          TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER NOT NULL,
    lease_owner  TEXT,
    lease_until  INTEGER,
    last_error   TEXT,
    delivered_at INTEGER
);
CREATE INDEX IF NOT EXISTS deliveries_due ON event_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_by_group
    ON event_deliveries (company_id, grp, seq) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS event_endpoints (
    company_id TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    doc        TEXT NOT NULL
);
";

/// The earliest pending delivery of each company and link that is due and not leased
/// by anyone (an expired lease is free again).
const CLAIM: &str = "SELECT d.event_id, e.doc, d.attempts
    FROM event_deliveries d JOIN events e ON e.id = d.event_id
    WHERE d.state = 'pending' AND d.next_at <= ?1
      AND (d.lease_until IS NULL OR d.lease_until <= ?1)
      AND NOT EXISTS (SELECT 1 FROM event_deliveries p
          WHERE p.state = 'pending' AND p.company_id = d.company_id
            AND p.grp = d.grp AND p.seq < d.seq)
    ORDER BY d.next_at, d.seq LIMIT ?2";

const STATUS_COLUMNS: &str = "event_id, state, attempts, next_at, last_error, delivered_at";

/// Queue a just-stored event (its row's `seq`) for delivery, in the insert's transaction.
pub(super) fn queue(
    tx: &rusqlite::Transaction<'_>,
    event: &EventRecord,
    seq: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO event_deliveries (event_id, company_id, grp, seq, state, attempts, next_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5)",
        params![
            event.id,
            event.company_id,
            delivery_group(event),
            seq,
            millis(event.received_at)
        ],
    )
    .map_err(unavailable)?;
    Ok(())
}

fn from_millis(ms: Option<i64>) -> Option<OffsetDateTime> {
    ms.and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
}

/// A status row as read: event id, state, attempts, next attempt, last error, delivered.
type StatusRow = (String, String, i64, i64, Option<String>, Option<i64>);

fn status_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StatusRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn to_status(row: StatusRow) -> Result<DeliveryStatus, StoreError> {
    let (event_id, state, attempts, next_at, last_error, delivered_at) = row;
    let state = DeliveryState::parse(&state)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery state `{state}`")))?;
    Ok(DeliveryStatus {
        event_id,
        next_attempt_at: (state == DeliveryState::Pending)
            .then(|| from_millis(Some(next_at)))
            .flatten(),
        state,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        last_error,
        delivered_at: from_millis(delivered_at),
    })
}

fn endpoint_doc(record: &EventEndpointRecord) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl DeliveryStore for EmbeddedStore {
    async fn insert_event_endpoint(&self, record: EventEndpointRecord) -> Result<(), StoreError> {
        let doc = endpoint_doc(&record)?;
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO event_endpoints (company_id, version, doc) VALUES (?1, ?2, ?3)",
                params![record.company_id, record.version, doc],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get_event_endpoint(
        &self,
        company_id: &str,
    ) -> Result<Option<EventEndpointRecord>, StoreError> {
        self.read(|c| {
            let doc: Option<String> = c
                .prepare_cached("SELECT doc FROM event_endpoints WHERE company_id = ?1")
                .map_err(unavailable)?
                .query_row(params![company_id], |r| r.get(0))
                .optional()
                .map_err(unavailable)?;
            doc.map(|d| serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()
        })
    }

    async fn replace_event_endpoint_cas(
        &self,
        mut record: EventEndpointRecord,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        record.version = expected_version + 1;
        let doc = endpoint_doc(&record)?;
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE event_endpoints SET version = ?2, doc = ?3
                     WHERE company_id = ?1 AND version = ?4",
                    params![record.company_id, record.version, doc, expected_version],
                )
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_event_endpoint(&self, company_id: &str) -> Result<bool, StoreError> {
        let company_id = company_id.to_string();
        self.write(move |tx| {
            let n = tx
                .execute(
                    "DELETE FROM event_endpoints WHERE company_id = ?1",
                    params![company_id],
                )
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn scan_event_endpoints(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventEndpointRecord>, StoreError> {
        let after = after.unwrap_or("").to_string();
        self.read_blocking(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT doc FROM event_endpoints WHERE company_id > ?1 ORDER BY company_id LIMIT ?2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![after, limit], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            docs(rows)
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let owner = owner.to_string();
        let (now, until) = (millis(now), millis(lease_until));
        self.write(move |tx| {
            let rows: Vec<(String, String, i64)> = {
                let mut stmt = tx.prepare_cached(CLAIM).map_err(unavailable)?;
                stmt.query_map(params![now, limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(unavailable)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(unavailable)?
            };
            let mut out = Vec::with_capacity(rows.len());
            for (event_id, doc, attempts) in rows {
                tx.execute(
                    "UPDATE event_deliveries SET lease_owner = ?2, lease_until = ?3 WHERE event_id = ?1",
                    params![event_id, owner, until],
                )
                .map_err(unavailable)?;
                let event: EventRecord =
                    serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                out.push(ClaimedDelivery {
                    event,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn finish_delivery(
        &self,
        event_id: &str,
        owner: &str,
        outcome: DeliveryOutcome,
    ) -> Result<bool, StoreError> {
        let (event_id, owner) = (event_id.to_string(), owner.to_string());
        self.write(move |tx| {
            let (state, attempts, next_at, error, delivered_at): (
                DeliveryState,
                Option<u32>,
                Option<i64>,
                Option<String>,
                Option<i64>,
            ) = match outcome {
                DeliveryOutcome::Delivered { at } => {
                    (DeliveryState::Delivered, None, None, None, Some(millis(at)))
                }
                DeliveryOutcome::Retry {
                    attempts,
                    next_at,
                    error,
                } => (
                    DeliveryState::Pending,
                    Some(attempts),
                    Some(millis(next_at)),
                    Some(error),
                    None,
                ),
                DeliveryOutcome::Parked { attempts, error } => (
                    DeliveryState::Parked,
                    Some(attempts),
                    None,
                    Some(error),
                    None,
                ),
                DeliveryOutcome::NoEndpoint => (DeliveryState::NoEndpoint, None, None, None, None),
            };
            let n = tx
                .execute(
                    "UPDATE event_deliveries SET state = ?3,
                        attempts = COALESCE(?4, attempts),
                        next_at = COALESCE(?5, next_at),
                        last_error = COALESCE(?6, last_error),
                        delivered_at = ?7,
                        lease_owner = NULL, lease_until = NULL
                     WHERE event_id = ?1 AND lease_owner = ?2",
                    params![
                        event_id,
                        owner,
                        state.as_str(),
                        attempts,
                        next_at,
                        error,
                        delivered_at
                    ],
                )
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn redeliver_event(
        &self,
        company_id: &str,
        event_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<DeliveryStatus>, StoreError> {
        let (company_id, event_id) = (company_id.to_string(), event_id.to_string());
        let now = millis(now);
        self.write(move |tx| {
            // An event stored before deliveries existed gets its row now.
            tx.execute(
                "INSERT INTO event_deliveries (event_id, company_id, grp, seq, state, attempts, next_at)
                 SELECT id, company_id, COALESCE(json_extract(doc, '$.link_id'), ''), seq, 'pending', 0, ?3
                 FROM events WHERE id = ?1 AND company_id = ?2
                 ON CONFLICT (event_id) DO UPDATE SET state = 'pending', attempts = 0,
                     next_at = excluded.next_at, last_error = NULL, delivered_at = NULL",
                params![event_id, company_id, now],
            )
            .map_err(unavailable)?;
            tx.query_row(
                &format!(
                    "SELECT {STATUS_COLUMNS} FROM event_deliveries WHERE event_id = ?1 AND company_id = ?2"
                ),
                params![event_id, company_id],
                status_row,
            )
            .optional()
            .map_err(unavailable)?
            .map(to_status)
            .transpose()
        })
        .await
    }

    async fn delivery_statuses(
        &self,
        company_id: &str,
        event_ids: &[String],
    ) -> Result<Vec<DeliveryStatus>, StoreError> {
        let company_id = company_id.to_string();
        let ids =
            serde_json::to_string(event_ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.read_blocking(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {STATUS_COLUMNS} FROM event_deliveries
                     WHERE event_id IN (SELECT value FROM json_each(?2)) AND company_id = ?1"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![company_id, ids], status_row)
                .map_err(unavailable)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)?;
            rows.into_iter().map(to_status).collect()
        })
        .await
    }
}
