//! End-to-end tests: the real `ferry` binary, over HTTP, against a local recording receiver.

mod auth;
mod cli;
mod crash;
mod graphql;
mod harness;
mod rest;
mod openapi;
mod retries;
mod trust;
mod webhook;
