//! `flow8-host events`: the company's event endpoint (`endpoint set|show|remove`) and
//! redelivering an event (`redeliver ID`), for an operator at the host's machine. The
//! work is `crate::delivery::endpoint`, the code the admin API runs, so both check the
//! URL against the same egress policy, seal, audit and replay alike; the answers are
//! the API's JSON. The company is `--company`; the audit entries name no user (the
//! operator acts, not an API token's user). A serving host on the same store delivers
//! what a command queues (at its next look, `delivery.poll_ms`).

use super::{fail, print_json};
use crate::app::HostSettings;
use crate::delivery::endpoint::EndpointAdmin;
use crate::error::ErrorName;
use crate::server::routes::event_delivery::{delivery_json, endpoint_json};
use clap::Subcommand;
use serde_json::json;
use std::process::ExitCode;

/// `events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// The company's event endpoint (where its events are delivered).
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Queue an event again whatever its state (parked, no_endpoint, or lost by flow8).
    Redeliver {
        /// The event's id (from `GET /api/v1/events`).
        id: String,
    },
}

/// `events endpoint` subcommands.
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Set the endpoint URL; prints the new signing secret once when one is made.
    Set {
        /// Where events are POSTed (http or https).
        url: String,
        /// Make a new signing secret even if the endpoint has one.
        #[arg(long)]
        rotate_secret: bool,
    },
    /// Show the endpoint (never its secret).
    Show,
    /// Stop delivering (events are still stored, as `no_endpoint`).
    Remove,
}

pub(super) async fn run(company: &str, settings: &HostSettings, cmd: &EventsCommand) -> ExitCode {
    let (store, vault) = match super::commands::open_store(settings).await {
        Ok(x) => x,
        Err((name, msg)) => return fail(name, msg),
    };
    let outbound = match crate::outbound::OutboundClient::new(settings.config.outbound_policy()) {
        Ok(o) => o,
        Err(e) => return fail(ErrorName::InternalError, e),
    };
    let admin = EndpointAdmin::new(
        store.clone(),
        vault,
        outbound,
        crate::server::audit::AuditWriter::start(store.clone()),
        crate::delivery::Deliveries::new(store),
        settings.config.delivery.replay_on_endpoint_set_hours,
    );
    let done = match cmd {
        EventsCommand::Endpoint(EndpointCommand::Set { url, rotate_secret }) => admin
            .set(company, None, url, *rotate_secret)
            .await
            .map(|s| endpoint_json(&s.record, s.new_secret.as_deref(), Some(s.replayed))),
        EventsCommand::Endpoint(EndpointCommand::Show) => admin
            .get(company)
            .await
            .map(|e| endpoint_json(&e, None, None)),
        EventsCommand::Endpoint(EndpointCommand::Remove) => admin
            .remove(company, None)
            .await
            .map(|()| json!({"removed": true})),
        EventsCommand::Redeliver { id } => admin
            .redeliver(company, None, id)
            .await
            .map(|s| json!({"id": id, "delivery": delivery_json(&s)})),
    };
    match done {
        Ok(v) => {
            print_json(&v);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.name(), e),
    }
}
