//! Who may use and manage a link inside its company. flow8's `DBLink` carries the user
//! who connected it (`user_id`) beside its company (`company_id`): a link is that
//! user's. Another member may use it only when the owner (or an admin) shared it with
//! them, or with the whole company ([`EVERYONE`]); an admin may use and delete any link
//! of the company. Only the owner or an admin deletes a link or changes its shares.
//! Every use or deletion by someone other than the owner is audited by the API (a
//! `link_access` entry per step, `integration_unlinked` naming actor and owner).

use crate::store::LinkRecord;
use serde::Serialize;

/// The share that opens a link to every member of its company.
pub const EVERYONE: &str = "*";

/// Who acts on a link: an API caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The caller's user id.
    pub user_id: String,
    /// Whether the caller is an admin of the link's company.
    pub admin: bool,
}

/// Why an actor may use a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkAccess {
    /// The actor connected it.
    Owner,
    /// The owner or an admin shared it with the actor (or the company).
    Shared,
    /// The actor is an admin of the company.
    Admin,
}

impl LinkAccess {
    /// The name the audit log uses.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkAccess::Owner => "owner",
            LinkAccess::Shared => "shared",
            LinkAccess::Admin => "admin",
        }
    }
}

/// Whether `actor` may use `link` in a step (or test it), and why.
pub fn may_use(link: &LinkRecord, actor: &Actor) -> Option<LinkAccess> {
    if link.user_id == actor.user_id {
        Some(LinkAccess::Owner)
    } else if link
        .shared_with
        .iter()
        .any(|u| u == &actor.user_id || u == EVERYONE)
    {
        Some(LinkAccess::Shared)
    } else if actor.admin {
        Some(LinkAccess::Admin)
    } else {
        None
    }
}

/// Whether `actor` may delete `link` or change whom it is shared with, and why.
pub fn may_manage(link: &LinkRecord, actor: &Actor) -> Option<LinkAccess> {
    if link.user_id == actor.user_id {
        Some(LinkAccess::Owner)
    } else if actor.admin {
        Some(LinkAccess::Admin)
    } else {
        None
    }
}

impl super::OAuthService {
    /// Share a link with `user_id` (or [`EVERYONE`]), or stop sharing it; the link
    /// after. Whether the caller may is the caller's check ([`may_manage`]).
    pub async fn set_share(
        &self,
        company_id: &str,
        service: &str,
        link_id: &str,
        user_id: &str,
        shared: bool,
    ) -> Result<LinkRecord, super::OAuthError> {
        use crate::store::{Store, StoreError};
        // Compare-and-set: a refresh may rewrite the link meanwhile.
        for _ in 0..8 {
            let mut link = self.link(company_id, link_id).await?;
            if link.integration_type != service {
                return Err(super::OAuthError::NotFound);
            }
            if link.shared_with.iter().any(|u| u == user_id) == shared {
                return Ok(link);
            }
            if shared {
                link.shared_with.push(user_id.to_string());
            } else {
                link.shared_with.retain(|u| u != user_id);
            }
            let version = link.version;
            if self.store.update_link_cas(link.clone(), version).await? {
                link.version = version + 1;
                return Ok(link);
            }
        }
        Err(super::OAuthError::Store(StoreError::Conflict(
            "the link kept changing while its shares were written; try again".into(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(owner: &str, shared_with: &[&str]) -> LinkRecord {
        let t = crate::store::now();
        LinkRecord {
            id: "l".into(),
            user_id: owner.into(),
            company_id: "c".into(),
            integration_type: "slack".into(),
            access_token: crate::vault::Vault::new(crate::vault::MasterKey::generate()).encrypt(
                "t",
                &crate::store::sealing::link("c", "l", crate::store::sealing::ACCESS_TOKEN),
            ),
            refresh_token: None,
            token_expiry: None,
            scopes: vec![],
            provider_user_id: String::new(),
            provider_user_email: String::new(),
            provider_metadata: serde_json::Value::Null,
            status: Default::default(),
            status_reason: None,
            shared_with: shared_with.iter().map(|s| s.to_string()).collect(),
            webhook_signature_secret: None,
            refresh_lease_owner: None,
            refresh_lease_until: None,
            refresh_retry_after: None,
            version: 0,
            created_at: t,
            updated_at: t,
        }
    }

    fn actor(user: &str, admin: bool) -> Actor {
        Actor {
            user_id: user.into(),
            admin,
        }
    }

    #[test]
    fn a_link_is_its_owners_unless_shared_and_admins_may_do_anything() {
        let alice = link("alice", &[]);
        assert_eq!(
            may_use(&alice, &actor("alice", false)),
            Some(LinkAccess::Owner)
        );
        assert_eq!(may_use(&alice, &actor("bob", false)), None);
        assert_eq!(may_manage(&alice, &actor("bob", false)), None);
        assert_eq!(
            may_use(&alice, &actor("root", true)),
            Some(LinkAccess::Admin)
        );
        assert_eq!(
            may_manage(&alice, &actor("root", true)),
            Some(LinkAccess::Admin)
        );
        let shared = link("alice", &["bob"]);
        assert_eq!(
            may_use(&shared, &actor("bob", false)),
            Some(LinkAccess::Shared)
        );
        assert_eq!(may_manage(&shared, &actor("bob", false)), None);
        assert_eq!(may_use(&shared, &actor("carol", false)), None);
        let everyone = link("alice", &[EVERYONE]);
        assert_eq!(
            may_use(&everyone, &actor("carol", false)),
            Some(LinkAccess::Shared)
        );
    }
}
