//! bamflow: the ingest daemon and the `bamflow` command, on [`bamflow_engine`].
//!
//! The daemon ([`app`]) finds finished files in watched folders ([`watch`]), claims each,
//! checks the [`ledger`] for content it converted before, converts it with the engine, and
//! files it away; [`status`] tells `bamflow status` why a file waits, [`metrics`] tells
//! Prometheus, [`service`] tells systemd. [`config`] reads the TOML file all of it runs on.

pub mod app;
pub mod books;
pub mod config;
pub mod coordination;
pub mod ledger;
pub mod metrics;
pub mod service;
pub mod status;
pub mod stores;
pub mod watch;
