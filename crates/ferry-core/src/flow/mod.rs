//! Flows and connections: YAML files → located diagnostics → compiled, runnable `Flow`s.
//!
//! `node` parses YAML with positions, `model` is the files as written, `load` finds files,
//! `compile` checks everything (collecting every error) and builds the runtime types. The
//! engine only ever sees compiled flows.

pub mod compile;
pub mod control;
pub mod load;
pub mod model;
pub mod node;
pub mod schema;

pub use compile::{Action, CompiledStep, Flow, SyncResponse, Trigger, Webhook};
pub use load::{Project, load_project, validate_paths};
