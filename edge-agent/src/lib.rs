//! # edgesync-agent
//!
//! The program that runs on a device or its gateway. Writes never wait for the network: every
//! event goes through [`ingest`] (library API, local HTTP, local MQTT) into the durable
//! [`spool`] with a per-device sequence number and HLC stamp, and the [`uplink`] (driving
//! `edgesync-protocol`'s agent state machine) publishes delta batches when it can, within its
//! [`budget`], resuming from the server's acknowledged watermark. [`service`] wires them together under one
//! cancellation token; [`config`] is the typed configuration; [`metrics`] the Prometheus
//! metrics.

pub mod budget;
pub mod cli;
pub mod config;
pub mod http;
pub mod ingest;
pub mod lanes;
pub mod metrics;
pub mod mqtt_ingest;
pub mod outbox;
pub mod service;
pub mod spool;
pub mod uplink;
