//! End-to-end tests: the real `ferry` binary, over HTTP, against a local recording receiver.

mod auth;
mod cli;
mod control;
mod crash;
mod examples;
mod graphql;
mod harness;
#[path = "../../../ferry-core/tests/support/node.rs"]
mod node;
mod openapi;
mod respond;
mod rest;
mod retries;
mod soap;
mod trust;
mod webhook;
mod xml;
