//! Route handlers, one file per resource.

pub mod audit_log;
pub mod components;
pub mod connect;
pub mod event_delivery;
pub mod integrations;
pub mod modules;
pub mod ops;
pub mod steps;
pub mod subscriptions;
pub mod webhooks;
