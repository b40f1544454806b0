//! Writing audit entries in flow8's shape. A failed audit write is logged loudly but
//! does not undo the operation it records (which has already happened).

use crate::store::{AuditRecord, Store, new_object_id, now};
use serde_json::Value;

/// Record an integration event.
#[allow(clippy::too_many_arguments)]
pub async fn record<S: Store>(
    store: &S,
    company_id: &str,
    user_id: Option<&str>,
    action_type: &str,
    resource_type: &str,
    resource_id: &str,
    before_state: Value,
    after_state: Value,
) {
    let entry = AuditRecord {
        id: new_object_id(),
        company_id: company_id.into(),
        user_id: user_id.map(str::to_string),
        action_type: action_type.into(),
        resource_type: resource_type.into(),
        resource_id: resource_id.into(),
        before_state,
        after_state,
        timestamp: now(),
    };
    if let Err(e) = store.insert_audit(entry).await {
        tracing::error!(error = %e, action_type, resource_id, "could not write an audit entry");
    }
}
