//! # edgesync-bridge
//!
//! The one place where MQTT meets Kafka, in both directions:
//!
//! - [`mqtt_in`]: a persistent, shared MQTT subscription to `edgesync/v1/+/batch`; each
//!   batch is validated ([`validate`]) and produced to the deltas topic keyed by device (or
//!   to the dead-letter topic with its reason), and acknowledged to MQTT only after Kafka's
//!   delivery report;
//! - [`acks`]: the acks topic back to devices as retained messages on their ack topics.
//!
//! [`service::run`] wires them under one cancellation token; [`config`] is the typed
//! configuration; [`metrics`] the Prometheus metrics.

pub mod acks;
pub mod config;
pub mod kafka;
pub mod metrics;
pub mod mqtt_in;
pub mod service;
pub mod validate;
