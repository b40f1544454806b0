//! End-to-end tests of the flow8 host. They start real servers on loopback, build
//! nothing themselves (`just test` builds the host, modules and guests first), and
//! drive the host as users do: the `flow8-host` CLI, or the runtime API for the tests
//! that need many steps on one host.

mod ai_modules;
mod api_request;
mod api_router;
mod api_server;
mod bad_input;
mod capability_review;
mod catalogue_config;
mod cli_http_request;
mod cli_links;
mod code_tiers;
mod connect_page;
mod event_delivery;
mod fair_share;
mod ftp_transfer;
mod gmail_send;
mod google_drive;
mod google_sheets;
mod hostile_egress;
mod hostile_guests;
mod hostile_wasi_http;
mod install_status;
mod key_rotation;
mod language_examples;
mod link_memory_scan;
mod local_store;
mod microsoft_calendar;
mod module_loading;
mod module_signatures;
mod module_templates;
mod mongodb_hosts;
mod oauth_flow;
mod oci_distribution;
mod oidc_provider;
mod onedrive;
mod operator;
mod outlook_mail;
mod provider_actions;
mod quickstart;
mod readme_layout;
mod record_cache;
mod s3_upload;
mod save_to_workspace;
mod sealed_records;
mod slack_message;
mod smtp_send;
mod step_budgets;
mod step_deadline;
mod store_conformance;
mod transfer_memory;
mod webhook_subscriptions;
mod webhooks;
