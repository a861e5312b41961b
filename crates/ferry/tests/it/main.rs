//! End-to-end tests: the real `ferry` binary, over HTTP, against a local recording receiver.

mod auth;
mod cli;
mod crash;
mod harness;
mod retries;
mod soap;
mod trust;
mod webhook;
mod xml;
